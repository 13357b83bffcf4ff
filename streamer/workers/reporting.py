"""What the inference worker tells others about itself: the status file, the gauges, the stats line.

Every second, the state of every stream goes into the run directory's status file
(`streamer.observability.status`, read by the supervisor for systemd, health and `yolostream status`) and the
sampled gauges are set; every ``logging.stats_interval_s``, one log line with the frames published per second
and the mean batch.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.observability.metrics import gpu_memory, gpu_memory_gauges, inference_metrics
from streamer.observability.status import RunStatus, StreamStatus, read_status, write_status
from streamer.output.publish import Publisher
from streamer.workers.streams import StreamBook

if TYPE_CHECKING:
    from streamer.config import Config

log = logging.getLogger(__name__)


class Reporter:
    def __init__(self, cfg: Config, book: StreamBook, publisher: Publisher, status_path: Path | None) -> None:
        self.interval = cfg.logging.stats_interval_s
        self.book = book
        self.publisher = publisher
        self.status_path = status_path
        self.metrics = inference_metrics()
        self.batch_sizes: Counter[int] = Counter()
        """How many batches of each size were submitted (since start)."""
        self._status_at = 0.0
        self._stats_at = time.monotonic()
        self._stats_published = 0
        self._stats_batches: Counter[int] = Counter()
        self._overflows_counted = 0
        self._gpu = gpu_memory() is not None

    def batch(self, size: int) -> None:
        self.batch_sizes[size] += 1
        self.metrics.batch_size.observe(size)

    def stats_due(self) -> bool:
        return self.interval > 0 and time.monotonic() - self._stats_at >= self.interval

    def tick(self) -> None:
        self._count_overflows()
        self._maybe_log_stats()
        self._maybe_write_status()

    def _count_overflows(self) -> None:
        """Add the publisher's new overflows (messages some subscriber missed) to their metric."""
        overflows = self.publisher.dropped
        if overflows != self._overflows_counted:
            self.metrics.publish_overflows.inc(overflows - self._overflows_counted)
            self._overflows_counted = overflows

    def _sample_gauges(self) -> None:
        self.publisher.poll_subscriptions()  # (read also while nothing is published: the count is current)
        self.metrics.subscriptions.set(self.publisher.subscribers)
        if self._gpu and (memory := gpu_memory()) is not None:
            used, total = gpu_memory_gauges()
            used.set(memory[0])
            total.set(memory[1])

    def _maybe_write_status(self) -> None:
        now = time.monotonic()
        if now - self._status_at < 1.0:
            return
        self._status_at = now
        self._sample_gauges()
        if self.status_path is None:
            return
        streams = {
            s.id: StreamStatus(
                s.state, s.published, s.dropped, s.last_frame_time, s.decoder, s.width, s.height
            )
            for s in self.book
        }
        published = sum(s.published for s in self.book)
        write_status(
            self.status_path,
            RunStatus(
                published=published, batches=sum(self.batch_sizes.values()), streams=streams,
                subscriptions=self.publisher.subscribers,
            ),
        )  # fmt: skip

    def _maybe_log_stats(self) -> None:
        if not self.stats_due():
            return
        now = time.monotonic()
        elapsed = now - self._stats_at
        total = sum(s.published for s in self.book)
        per_stream = ", ".join(f"{s.id} {s.published}" for s in self.book)
        recent = self.batch_sizes - self._stats_batches
        batches = sum(recent.values())
        batch = sum(size * n for size, n in recent.items()) / batches if batches else 0.0
        log.info(
            "%.1f frames/s published (%d in %.1f s; totals: %s); mean batch %.2f; %d subscription(s)",
            (total - self._stats_published) / elapsed, total - self._stats_published, elapsed, per_stream,
            batch, self.publisher.subscribers,
        )  # fmt: skip
        self._stats_at, self._stats_published = now, total
        self._stats_batches = self.batch_sizes.copy()

    def close(self) -> None:
        self._count_overflows()


RESUBSCRIBE_WAIT_S = 2.0


def wait_for_previous_subscribers(publisher: Publisher, status_path: Path) -> None:
    """In a replacement inference worker: wait (at most `RESUBSCRIBE_WAIT_S`) until the subscribers of
    the worker before (its last status) have reconnected, so that they miss none of the first messages
    (the accounting of what the old worker lost among them)."""
    previous = read_status(status_path)
    wanted = previous.subscriptions if previous is not None else 0
    if wanted and not publisher.wait_for_subscribers(wanted, timeout=RESUBSCRIBE_WAIT_S):
        log.info(
            "%d of %d subscription(s) came back after the inference worker restart",
            publisher.subscribers, wanted,
        )  # fmt: skip
