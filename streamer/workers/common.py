"""What every worker process shares: its start-up context, signal handling and parent watch."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from streamer.logs import setup_child


@dataclass(frozen=True)
class WorkerContext:
    """Handed to every worker process by the supervisor (picklable for the spawn start method)."""

    run_dir: str
    """Private directory on a tmpfs holding this run's frame rings and sockets."""
    notify_endpoint: str
    log_queue: Any
    log_level: str
    stop: Any
    """multiprocessing.Event: set by the supervisor when the worker should finish."""
    parent_pid: int
    inference_epoch: Any = None
    """multiprocessing.Value('i'): bumped by the supervisor when the inference worker is replaced, so that
    source workers take back the ring slots of frames the old one will never read."""


class StopFlag:
    """True once the supervisor asked us to stop, we got SIGTERM, or the supervisor died."""

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx
        self._local = threading.Event()

    def is_set(self) -> bool:
        return self._local.is_set() or self._ctx.stop.is_set() or os.getppid() != self._ctx.parent_pid

    def set(self) -> None:
        self._local.set()


def start_worker(ctx: WorkerContext) -> StopFlag:
    """Common start of a worker process: logging through the queue, signals, and the stop flag.

    Ctrl-C in a terminal sends SIGINT to the whole process group; the supervisor decides how workers
    stop, so they ignore it. SIGTERM sent to a worker directly makes it finish cleanly.
    """
    setup_child(ctx.log_queue, ctx.log_level)
    flag = StopFlag(ctx)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: flag.set())
    return flag
