"""Memory budgets (``supervisor.source_rss_limit_mb``, ``inference_rss_limit_mb``): a worker process over
its budget is restarted between frames, which is not counted as a crash. The budget is per process: a
decoder group is recycled as one, with all its streams."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from streamer.observability.process_memory import rss_mb

if TYPE_CHECKING:
    from streamer.config import SupervisorConfig
    from streamer.daemon.inference_workers import InferenceWorker
    from streamer.daemon.processes import SourceProcess

log = logging.getLogger(__name__)

MEMORY_CHECK_S = 5.0
RECYCLE_MIN_AGE_S = 10.0
"""A process is recycled for its memory only after it has run this long: a budget below what a worker
needs at start must not recycle it before it reads a frame (on a loaded machine a decoder group was
recycled over and over while still opening its files, and published nothing)."""


class MemoryBudgets:
    """Checks every `MEMORY_CHECK_S` which worker processes are over their budget, and recycles them."""

    def __init__(self) -> None:
        self._checked_at = 0.0
        self._first_seen: dict[int, float] = {}
        """When a check first saw each process (pid): its age, for `RECYCLE_MIN_AGE_S`."""

    def check(
        self, limits: SupervisorConfig, sources: Iterable[SourceProcess], workers: Iterable[InferenceWorker]
    ) -> None:
        now = time.monotonic()
        if now - self._checked_at < MEMORY_CHECK_S:
            return
        self._checked_at = now
        sources, workers = list(sources), list(workers)
        pids = [s.pid for s in sources] + [w.process.pid for w in workers]
        self._first_seen = {pid: self._first_seen.get(pid, now) for pid in pids if pid is not None}

        def old_enough(pid: int | None) -> bool:
            return pid is not None and now - self._first_seen[pid] >= RECYCLE_MIN_AGE_S

        if limits.source_rss_limit_mb:
            checked = set()
            for source in sources:
                if source.pid in checked or not old_enough(source.pid):  # a decoder group: one budget
                    continue
                checked.add(source.pid)
                used = rss_mb(source.pid)
                if source.alive() and used is not None and used > limits.source_rss_limit_mb:
                    log.warning("%s uses %.0f MiB > %d MiB: recycling it", source.label, used,
                                limits.source_rss_limit_mb)  # fmt: skip
                    source.recycle()
        if limits.inference_rss_limit_mb:
            for w in workers:
                used = rss_mb(w.process.pid) if old_enough(w.process.pid) else None
                if used is not None and used > limits.inference_rss_limit_mb:
                    log.warning("%s uses %.0f MiB > %d MiB: recycling it", w.label.removeprefix("the "), used,
                                limits.inference_rss_limit_mb)  # fmt: skip
                    w.restart_planned()
