"""The supervisor's side of the workers' heartbeats: which worker stopped advancing, and where it is stuck.

Every worker stores the monotonic time of its loop's last turn in memory shared with the supervisor
(`streamer.workers.common.Heartbeat`). A worker silent for longer than its limit is stuck — a blocking
call that never returns, a deadlock, SIGSTOP — and is killed so that the ordinary restart takes over;
first its Python stack is fetched with faulthandler (`STACK_SIGNAL`), which answers from C even while the
interpreter's main thread is blocked. A stopped process cannot answer: that is said instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.workers.common import STACK_SIGNAL, stack_file

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext

    from streamer.daemon.processes import SourceProcess

STACK_WAIT_S = 3.0
"""How long to wait for a stuck worker's stack before killing it without one."""


def shared_heartbeat(mpc: SpawnContext) -> Any:
    """The memory a worker beats into: ``[last beat (monotonic), warm (0/1)]``, the beat set to now."""
    return mpc.RawArray("d", [time.monotonic(), 0.0])


def silent_for(shared: Any, since: float = 0.0) -> float:
    """Seconds since the worker's last beat (or since `since`, if later: e.g. when it became ready)."""
    return time.monotonic() - max(shared[0], since)


def is_warm(shared: Any) -> bool:
    return bool(shared[1])


def process_state(pid: int) -> str:
    """The process's state letter from /proc (``R``, ``S``, ``D``, ``T`` stopped…), or ``?``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def python_stack(pid: int, run_dir: str, wait_s: float = STACK_WAIT_S) -> str:
    """Every thread's Python stack of worker `pid`, or a sentence saying why there is none."""
    if process_state(pid) in ("T", "t"):
        return "(no stack: the process is stopped, by SIGSTOP or a debugger)"
    path = stack_file(run_dir, pid)
    try:
        before = path.stat().st_size
        os.kill(pid, STACK_SIGNAL)
    except OSError as exc:
        return f"(no stack: {exc.strerror or exc})"
    deadline = time.monotonic() + wait_s
    size = before
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = path.stat().st_size if path.exists() else before
        if now > before and now == size:  # written, and no longer growing
            with path.open("rb") as f:
                f.seek(before)
                return f.read().decode("utf-8", "replace").rstrip()
        size = now
    return f"(no stack: the process did not answer within {wait_s:.0f} s)"


def stalled_sources(
    sources: Iterable[tuple[str, SourceProcess]], timeout_s: float, startup_s: float
) -> Iterator[tuple[str, float, list[str], Any]]:
    """The source processes silent for longer than their limit: ``(what, silent s, streams, process)``.

    The streams of a decoder group share one process and its heartbeat: the largest of their limits
    applies, and the process is named once. A process still spawning (importing, loading libraries) gets
    at least `startup_s`.
    """
    processes: dict[int, tuple[float, list[str], Any, Any, str]] = {}
    for sid, worker in sources:
        shared, proc = worker.beating()
        if shared is None or proc is None or not worker.alive():
            continue
        limit = worker.heartbeat_limit(timeout_s)
        if not is_warm(shared):
            limit = max(limit, startup_s)
        was, sids, *_ = processes.get(id(shared), (0.0, [], None, None, ""))
        processes[id(shared)] = (max(was, limit), [*sids, sid], shared, proc, worker.label)
    for limit, sids, shared, proc, label in processes.values():
        if (silent := silent_for(shared)) > limit:
            yield (f"stream {sids[0]}: the source worker" if len(sids) == 1 else label), silent, sids, proc


__all__ = ["is_warm", "process_state", "python_stack", "shared_heartbeat", "silent_for", "stalled_sources"]
