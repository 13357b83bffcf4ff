"""What every worker process shares: its start-up context, signal handling and parent watch."""

from __future__ import annotations

import cProfile
import faulthandler
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from streamer.logs import setup_child
from streamer.observability.metrics import DROP_RING_FULL
from streamer.workers import memtrace


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
    engine_on_gpu: Any = None
    """multiprocessing.Value('b'): set by the inference worker before it is ready — 1 when its engine takes
    frames in GPU memory. ``decoder: auto`` picks NVDEC only then: for an engine on the CPU, NVDEC frames
    would come back to the host and be letterboxed by the slow NumPy model."""
    heartbeat: Any = None
    """multiprocessing.RawArray('d', 2): the worker's `Heartbeat`, read by the supervisor."""
    cuda_device: int = 0
    """The GPU of the inference worker this context belongs to (``engine.devices``): NVDEC decodes there,
    so that its frames' CUDA ring and the engine share a device."""


class StopFlag:
    """True once the supervisor asked us to stop, we got SIGTERM, or the supervisor died."""

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx
        self._local = threading.Event()

    def is_set(self) -> bool:
        return self._local.is_set() or self._ctx.stop.is_set() or os.getppid() != self._ctx.parent_pid

    def set(self) -> None:
        self._local.set()


class Heartbeat:
    """A worker's proof of progress, in memory shared with the supervisor (`streamer.daemon.heartbeat`).

    ``[0]``: the monotonic time (system-wide on Linux) of the loop's last turn; ``[1]``: 1 once the
    worker is past its start-up (the inference worker's first batch, during which an engine may compile).
    """

    def __init__(self, shared: Any) -> None:
        self._shared = shared

    def beat(self) -> None:
        if self._shared is not None:
            self._shared[0] = time.monotonic()

    def warm(self) -> None:
        if self._shared is not None:
            self._shared[1] = 1.0


_heartbeat = Heartbeat(None)


def heartbeat() -> Heartbeat:
    """This process's heartbeat (set by `start_worker`; one that does nothing elsewhere, e.g. in tests)."""
    return _heartbeat


STACK_SIGNAL = signal.SIGUSR1
"""Sent by the supervisor to a stuck worker: faulthandler writes every thread's Python stack."""


def stack_file(run_dir: str, pid: int) -> Path:
    return Path(run_dir) / f"stack-{pid}.txt"


_stack_out: list[Any] = []  # the open stack file: faulthandler writes to its descriptor


def start_worker(ctx: WorkerContext) -> StopFlag:
    """Common start of a worker process: logging through the queue, signals, and the stop flag.

    Ctrl-C in a terminal sends SIGINT to the whole process group; the supervisor decides how workers
    stop, so they ignore it. SIGTERM sent to a worker directly makes it finish cleanly. `STACK_SIGNAL`
    dumps the Python stacks into the run directory (from C, so also while the loop is stuck).
    """
    setup_child(ctx.log_queue, ctx.log_level)
    flag = StopFlag(ctx)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: flag.set())
    out = stack_file(ctx.run_dir, os.getpid()).open("w")
    _stack_out.append(out)
    faulthandler.register(STACK_SIGNAL, file=out, all_threads=True)
    global _heartbeat
    _heartbeat = Heartbeat(ctx.heartbeat)
    _heartbeat.beat()
    return flag


next_generation = itertools.count(1).__next__
"""A number new within this process, for the name of a ring file (``<stream>.<pid>.<generation>``): a
stream restarted inside the same process (a decoder group) never reuses a file the reader has mapped."""


class Prior(NamedTuple):
    """What a source tells the inference worker, with each frame it announces, about the frames before it:
    the index of the one it announced last (-1: none) and how many after that it dropped, by reason.
    With these the inference worker accounts for every frame index (`streamer.workers.streams`)."""

    after: int = -1
    ring_full: int = 0
    notify_full: int = 0

    def dropped(self, reason: str) -> Prior:
        """This, with one more frame dropped for `reason` (`DROP_RING_FULL` or `DROP_NOTIFY_FULL`)."""
        if reason == DROP_RING_FULL:
            return self._replace(ring_full=self.ring_full + 1)
        return self._replace(notify_full=self.notify_full + 1)


NO_PRIOR = Prior()

PROFILE_ENV = "YOLOSTREAM_PROFILE"
_T = TypeVar("_T")


def profiled(role: str, entry: Callable[..., _T], *args: Any) -> _T:
    """`entry(*args)`, under cProfile when $YOLOSTREAM_PROFILE names a folder (a developer's tool), and
    tracing its allocations, once its heartbeat says it is warm, when $YOLOSTREAM_TRACEMALLOC does
    (`memtrace`).

    The statistics go to ``<folder>/<role>-<pid>.prof`` when the worker returns, e.g. for
    ``python -m pstats``; a worker killed by a signal writes nothing.
    """
    ctx = next((a for a in args if isinstance(a, WorkerContext)), None)
    memtrace.start(role, ready=lambda: ctx is None or ctx.heartbeat is None or bool(ctx.heartbeat[1]))
    folder = os.environ.get(PROFILE_ENV)
    if not folder:
        return entry(*args)
    profile = cProfile.Profile()
    try:
        return profile.runcall(entry, *args)
    finally:
        Path(folder).mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(Path(folder) / f"{role}-{os.getpid()}.prof"))
