"""The worker processes as the supervisor sees them: started, watched, restarted, recycled, stopped.

`InferenceProcess` is the one inference worker; `SourceProcess` one source worker per stream. Both start
with the spawn method and configure their own logging (through the queue in their `WorkerContext`). A
source has its own stop event, so one stream can be stopped (reload, recycle) without touching the others.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.daemon.heartbeat import python_stack, shared_heartbeat
from streamer.daemon.restart import RestartPolicy, RestartTracker
from streamer.errors import EXIT_OK, EXIT_SOURCE_FAILED, EXIT_SOURCE_STALLED
from streamer.messages import EVENT_STALLED, StreamEvent
from streamer.workers.common import WorkerContext, profiled
from streamer.workers.inference import run_inference
from streamer.workers.source import WATCHDOG_GRACE_S, run_source

if TYPE_CHECKING:
    from multiprocessing.context import SpawnContext
    from multiprocessing.process import BaseProcess

    from streamer.config import Config, SourceConfig

log = logging.getLogger(__name__)

SOURCE_JOIN_S = 10.0  # > a source's read timeout (5 s by default): a silent camera may hold it that long
INFERENCE_DRAIN_S = 60.0


def _source_entry(cfg: SourceConfig, ctx: WorkerContext) -> None:
    raise SystemExit(profiled(f"source-{cfg.id}", run_source, cfg, ctx))


def _inference_entry(cfg: Config, model: Path, ctx: WorkerContext, ready: Any, role: str) -> None:
    raise SystemExit(profiled(role, run_inference, cfg, model, ctx, ready))


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def kill(proc: BaseProcess) -> None:
    if proc.is_alive():
        proc.kill()
        proc.join(5)


def kill_stalled(proc: Any, what: str, silent: float, streams: list[str], run_dir: str) -> list[StreamEvent]:
    """Log a stuck worker with its stack and kill it (the ordinary restart takes over); the events that
    say so, one per stream it carried."""
    stack = python_stack(proc.pid, run_dir)
    log.error(
        "%s (pid %d) has not advanced for %.0f s (supervisor.heartbeat_timeout_s): killing it for a "
        "restart. Its Python stack:\n%s",
        what, proc.pid, silent, stack,
    )  # fmt: skip
    kill(proc)
    message = f"{what.split(': ')[-1]} had not advanced for {silent:.0f} s: killed and restarted"
    detail: dict[str, str | int | float] = {"pid": proc.pid, "stalled_s": round(silent, 1)}
    return [StreamEvent(sid, EVENT_STALLED, message, detail=detail) for sid in streams]


def policy_of(cfg: Config) -> RestartPolicy:
    s = cfg.supervisor
    return RestartPolicy(s.restart_initial_s, s.restart_max_s, 2.0, s.max_restarts, s.restart_window_s)


class _WorkerProcess:
    """What both kinds of worker share: the current process, if any, its heartbeat, and how it ended."""

    proc: BaseProcess | None = None
    heartbeat: Any = None
    """The current process's `streamer.daemon.heartbeat.shared_heartbeat`."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def exited(self) -> int | None:
        """The exit code if the worker has exited since the last call (then forgets the process)."""
        if self.proc is None or self.proc.exitcode is None:
            return None
        code = self.proc.exitcode
        self.proc.join()
        self.proc = None
        return code


class SourceProcess(_WorkerProcess):
    """One stream's worker across its restarts."""

    def __init__(
        self, mpc: SpawnContext, cfg: SourceConfig, ctx: WorkerContext, policy: RestartPolicy
    ) -> None:
        self._mp = mpc
        self.cfg = cfg
        self._base_ctx = ctx
        self.tracker = RestartTracker(policy)
        self.proc: BaseProcess | None = None
        self.stop_event: Any = None
        self.restart_at: float | None = None
        """When a restart is due (monotonic), if one is scheduled."""
        self.planned = False
        """The current exit was asked for (recycle, reload): restart at once, without counting a crash."""
        self.done = False
        """The stream ended, failed for good, or was removed: never restart it."""
        self.failed = False
        """It ended in failure (bad input, or too many crashes), not at the end of its file."""
        self.removed = False
        """Removed from the config by a reload: forget it once it has exited."""
        self.exit_was_clean = False
        """The last exit was the worker's own (not a kill), so it sent its SourceExit notification."""

    def start(self) -> None:
        self.stop_event, self.heartbeat = self._mp.Event(), shared_heartbeat(self._mp)
        ctx = replace(self._base_ctx, stop=self.stop_event, heartbeat=self.heartbeat)
        self.proc = self._mp.Process(target=_source_entry, args=(self.cfg, ctx), name=f"source:{self.cfg.id}")
        self.proc.start()
        self.tracker.started()
        self.restart_at, self.planned = None, False

    @property
    def label(self) -> str:
        """What its log lines call the process."""
        return f"stream {self.cfg.id}: source worker"

    def process_key(self) -> tuple[str, str]:
        """``(worker, name)`` of its process: streams that share a process (a decoder group) share it."""
        return ("source", self.cfg.id)

    def waitables(self) -> list[Any]:
        """What the supervisor waits on to notice this stream's exit."""
        return [self.proc.sentinel] if self.proc is not None else []

    def ask_to_stop(self, planned: bool) -> None:
        self.planned = planned
        if self.stop_event is not None:
            self.stop_event.set()

    def recycle(self) -> None:
        """Restart its process between frames (over its memory budget); not counted as a crash."""
        self.ask_to_stop(planned=True)

    def join(self, timeout: float) -> None:
        if self.proc is not None:
            self.proc.join(timeout)
            if self.proc.is_alive():
                log.warning(
                    "stream %s: source worker did not stop in %.0f s; killing it", self.cfg.id, timeout
                )
                kill(self.proc)

    def beating(self) -> tuple[Any, Any]:
        """(the heartbeat its loop writes, the process it beats in); a decoder group's stream: the group's."""
        return self.heartbeat, self.proc

    def heartbeat_limit(self, timeout_s: float) -> float:
        """How long the worker may be silent: a live stream's decoder call may block until its own
        watchdog ends it (`WATCHDOG_GRACE_S` past the call's timeout)."""
        c = self.cfg
        floor = max(c.open_timeout_s, c.read_timeout_s) + WATCHDOG_GRACE_S + 5.0 if c.is_live else 0.0
        return max(timeout_s, floor)

    def on_exit(self, code: int) -> str | None:
        """Decide what follows an exit; returns a reason to report as an error event, or None."""
        if self.planned and code == EXIT_OK:
            self.restart_at = time.monotonic()  # recycle or reconfigure: straight back
            return None
        if code == EXIT_SOURCE_STALLED:
            # The decoder hung on a camera and the worker's watchdog ended it: a camera problem, not a
            # crash of ours. Restart at once (the hang itself took read_timeout + 10 s) without counting it.
            self.restart_at = time.monotonic() + self.tracker.policy.initial_s
            return f"source worker {describe_exit(code)} (the decoder hung); restarting it"
        if code in (EXIT_OK, EXIT_SOURCE_FAILED):
            self.done = True  # ended (end of file), or failed and said why itself
            self.failed = code == EXIT_SOURCE_FAILED
            return None
        delay = self.tracker.crashed()
        if delay is None:
            self.done = self.failed = True
            p = self.tracker.policy
            return (
                f"source worker {describe_exit(code)}; restarted {p.max_restarts} times in "
                f"{p.window_s:.0f} s: giving up"
            )
        self.restart_at = time.monotonic() + delay
        return f"source worker {describe_exit(code)}; restarting it in {delay:.1f} s"


class InferenceProcess(_WorkerProcess):
    """An inference worker across its restarts (`name`: its device's, with ``engine.devices``)."""

    def __init__(self, mpc: SpawnContext, ctx: WorkerContext, policy: RestartPolicy, name: str = "") -> None:
        self._mp = mpc
        self._ctx = ctx
        self.name = name
        self.tracker = RestartTracker(policy)
        self.proc: BaseProcess | None = None
        self.stop_event: Any = None
        self.ready: Any = None
        self.restart_at: float | None = None
        self.planned = False

    def start(self, cfg: Config, model: Path) -> None:
        self.stop_event, self.ready = self._mp.Event(), self._mp.Event()
        self.heartbeat = shared_heartbeat(self._mp)
        ctx = replace(self._ctx, stop=self.stop_event, heartbeat=self.heartbeat)
        role = f"inference-{self.name}" if self.name else "inference"
        self.proc = self._mp.Process(
            target=_inference_entry, args=(cfg, model, ctx, self.ready, role), name=role.replace("-", ":")
        )
        self.proc.start()
        self.tracker.started()
        self.restart_at, self.planned = None, False

    def wait_ready(self, interrupted: Any) -> bool:
        """Wait until the model is loaded; False if the worker died or `interrupted()` became true."""
        if self.proc is None or self.ready is None:
            raise RuntimeError("wait_ready() before start()")
        while not self.ready.wait(0.1):
            if not self.proc.is_alive() or interrupted():
                return False
        return True

    def drain_and_join(self, send_shutdown: Any) -> None:
        """Ask the worker to finish what it has (through `send_shutdown()`), and wait for it."""
        if self.proc is None or not self.proc.is_alive():
            return
        send_shutdown()
        self.proc.join(INFERENCE_DRAIN_S)
        if self.proc.is_alive():
            log.warning(
                "inference worker %s did not finish in %.0f s; stopping it",
                self.name or "",
                INFERENCE_DRAIN_S,
            )
            self.stop_event.set()
            self.proc.join(5)
            kill(self.proc)
