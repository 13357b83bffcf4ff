"""Decoder groups as the supervisor sees them: source worker processes that host several streams.

Every NVDEC source process holds a CUDA context (~500 MiB of GPU memory; 49 contexts also time-slice the
GPU so that the engine's batch took 22 ms instead of 9), so streams decoded by NVDEC share a process K at
a time (``supervisor.nvdec_streams_per_process``, 8 by default); streams decoded on the CPU get a process
each by default (``supervisor.cpu_streams_per_process``: 1), where process isolation is cheap.

`DecoderGroups.worker_for` places a stream and returns the object the supervisor keeps for it: a
`SourceProcess` (a process of its own) or a `GroupMember`, which behaves like one — started, stopped,
joined, its exit reported and judged by the same `SourceProcess.on_exit` — but whose "process" is its
thread in a shared `GroupProcess` (`streamer.workers.decoder_group`). So:

- a stream that ends, fails, or whose loop crashes ends only its thread; the supervisor restarts it in
  the same process with the same backoff and budget as a process of its own;
- a crash of the shared process (or a recycle, or a hung decoder) ends all its streams: each is judged on
  the process's exit code and restarted; a restarted stream resumes as after a restart of its own
  process (a file starts again at its beginning, a camera reconnects: the frames of the gap are lost);
- a reload that changes or removes a stream stops only its thread; its group mates are not touched.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from streamer.daemon.heartbeat import shared_heartbeat
from streamer.daemon.processes import SourceProcess, describe_exit, kill
from streamer.errors import EXIT_SOURCE_STALLED
from streamer.workers.common import profiled
from streamer.workers.decoder_group import GroupCommand, GroupReport, run_group

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnContext
    from multiprocessing.process import BaseProcess

    from streamer.config import SourceConfig, SupervisorConfig
    from streamer.daemon.restart import RestartPolicy
    from streamer.workers.common import WorkerContext

log = logging.getLogger(__name__)

RETRY_START_S = 0.2
"""A stream due to start in a group whose process is still exiting tries again after this long."""


def decoder_kind(cfg: SourceConfig, engine_on_gpu: bool) -> str:
    """``nvdec`` for a stream that will decode on the GPU, else ``cpu`` (as `open_source` decides)."""
    if cfg.decoder != "auto":
        return cfg.decoder
    if not engine_on_gpu:
        return "cpu"
    from streamer.sources.nvdec import nvdec_usable  # (looks for the driver and the modules, imports neither)

    return "nvdec" if nvdec_usable() is None else "cpu"


def _group_entry(name: str, cfgs: list[SourceConfig], ctx: WorkerContext, conn: Connection) -> None:
    raise SystemExit(profiled(f"decoders-{name}", run_group, name, cfgs, ctx, conn))


class GroupProcess:
    """One shared source worker process across its restarts, and the streams placed in it."""

    def __init__(self, mpc: SpawnContext, ctx: WorkerContext, name: str, kind: str, size: int) -> None:
        self._mp, self._ctx = mpc, ctx
        self.name, self.kind, self.size = name, kind, size
        self.members: dict[str, GroupMember] = {}
        self.proc: BaseProcess | None = None
        self.conn: Connection | None = None
        self.stop_event: Any = None
        self.heartbeat: Any = None
        """The process's `streamer.daemon.heartbeat.shared_heartbeat`: every stream thread's loop beats it."""
        self.stalled: str | None = None
        """The stream whose decoder hung, when the process exits for that."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    @property
    def stopping(self) -> bool:
        return self.proc is not None and self.stop_event is not None and self.stop_event.is_set()

    def streams(self) -> list[str]:
        return [sid for sid, m in self.members.items() if not (m.done or m.removed)]

    def waitables(self) -> list[Any]:
        return [self.proc.sentinel, self.conn] if self.proc is not None and self.conn is not None else []

    def run(self, member: GroupMember) -> bool:
        """Start `member`'s stream in the process (spawning it if needed); False: try again shortly."""
        self.poll()
        if self.stopping:
            return False  # (a recycle, or the last stream left): a new process once this one has exited
        self.members[member.cfg.id] = member
        if self.proc is None:
            self._spawn([member.cfg])
        else:
            self._send(GroupCommand("start", member.cfg.id, member.cfg))
        return True

    def _spawn(self, cfgs: list[SourceConfig]) -> None:
        self.stop_event, self.heartbeat = self._mp.Event(), shared_heartbeat(self._mp)
        mine, theirs = self._mp.Pipe()
        ctx = replace(self._ctx, stop=self.stop_event, heartbeat=self.heartbeat)
        self.proc = self._mp.Process(
            target=_group_entry, args=(self.name, cfgs, ctx, theirs), name=f"decoders:{self.name}"
        )
        self.proc.start()
        theirs.close()
        self.conn, self.stalled = mine, None
        log.info("decoder group %s: source worker started (pid %s)", self.name, self.proc.pid)

    def _send(self, cmd: GroupCommand) -> None:
        try:
            if self.conn is not None:
                self.conn.send(cmd)
        except OSError:  # it has died: `poll` will see its exit
            pass

    def stop_stream(self, member: GroupMember) -> None:
        """Stop one stream's thread; the whole process once none of its streams is wanted any more."""
        if member.running:
            self._send(GroupCommand("stop", member.cfg.id))
        if not any(m.running and not m.stopping for m in self.members.values()):
            self._stop_process()

    def recycle(self) -> None:
        """End the process (over its memory budget): its streams restart at once in a new one."""
        for member in self.members.values():
            if member.running:
                member.planned = True
        self._stop_process()

    def _stop_process(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()

    def poll(self) -> None:
        """Take the process's reports; when it has exited, its running streams end with its exit code."""
        exited = self.proc is not None and self.proc.exitcode is not None  # (before draining: no report lost)
        while self.conn is not None:
            try:
                if not self.conn.poll():
                    break
                report: GroupReport = self.conn.recv()
            except (EOFError, OSError):
                break
            member = self.members.get(report.stream)
            if report.kind == "stalled":
                self.stalled = report.stream
            elif member is not None and member.running:
                member.ended(report.code)
        if not exited or self.proc is None:
            return
        code = self.proc.exitcode
        self.proc.join()
        self.proc = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if code != 0 or any(m.running for m in self.members.values()):
            log.info("decoder group %s: source worker exited (%s)", self.name, describe_exit(code))
        for member in self.members.values():
            if member.running:
                member.ended(code if code is not None else -1)

    def retire_if_idle(self) -> None:
        """Forget removed streams; end the process when none of its streams runs or is due to restart.

        A stream that ended stays a member (it takes no place): changed by a reload, it comes back here.
        """
        for sid, member in list(self.members.items()):
            if member.removed and not member.running:
                del self.members[sid]
        if self.proc is not None and not any(
            m.running or m.restart_at is not None for m in self.members.values()
        ):
            self._stop_process()

    def kill(self) -> None:
        if self.proc is not None:
            kill(self.proc)

    def close(self, timeout: float) -> None:
        """Stop the process and wait for it (the daemon is stopping)."""
        self._stop_process()
        if self.proc is not None:
            self.proc.join(timeout)
            if self.proc.is_alive():
                log.warning(
                    "decoder group %s: source worker did not stop in %.0f s; killing it", self.name, timeout
                )
            kill(self.proc)
        self.poll()


class GroupMember(SourceProcess):
    """A stream in a `GroupProcess`: what the supervisor keeps for it, as for a `SourceProcess`."""

    def __init__(
        self,
        mpc: SpawnContext,
        cfg: SourceConfig,
        ctx: WorkerContext,
        policy: RestartPolicy,
        group: GroupProcess,
    ) -> None:
        super().__init__(mpc, cfg, ctx, policy)
        self.group = group
        self.running = False
        """Its thread runs (or was asked to start) in the group's process."""
        self.stopping = False
        self._code: int | None = None

    @property
    def pid(self) -> int | None:
        return self.group.pid if self.running else None

    @property
    def label(self) -> str:
        return f"decoder group {self.group.name} (streams {', '.join(self.group.streams())})"

    def process_key(self) -> tuple[str, str]:
        return ("decoders", self.group.name)

    def alive(self) -> bool:
        return self.running and self.group.alive()

    def beating(self) -> tuple[Any, Any]:
        return self.group.heartbeat, self.group.proc

    def waitables(self) -> list[Any]:
        return self.group.waitables()

    def ended(self, code: int) -> None:
        """Called by the group: the stream's thread, or the whole process, has ended with `code`."""
        self.running, self.stopping, self._code = False, False, code

    def exited(self) -> int | None:
        self.group.poll()
        code, self._code = self._code, None
        return code

    def start(self) -> None:
        if not self.group.run(self):
            self.restart_at = time.monotonic() + RETRY_START_S
            return
        self.running, self.stopping = True, False
        self.tracker.started()
        self.restart_at, self.planned = None, False

    def ask_to_stop(self, planned: bool) -> None:
        self.planned = planned
        self.stopping = True
        self.group.stop_stream(self)

    def recycle(self) -> None:
        self.group.recycle()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.running and (left := deadline - time.monotonic()) > 0:
            multiprocessing.connection.wait(self.group.waitables(), timeout=min(left, 0.1))
            self.group.poll()
        if self.running:
            log.warning("stream %s: did not stop in %.0f s; killing its %s", self.cfg.id, timeout, self.label)
            self.group.kill()
            self.group.poll()

    def on_exit(self, code: int) -> str | None:
        reason = super().on_exit(code)
        hung = self.group.stalled
        if code == EXIT_SOURCE_STALLED and hung is not None and hung != self.cfg.id:
            reason = f"the decoder of stream {hung} hung in the shared source worker; restarting it"
        self.group.retire_if_idle()
        return reason


class DecoderGroups:
    """Places streams: in a process of their own, or in a group of their kind with a free place."""

    def __init__(self, mpc: SpawnContext, ctx: WorkerContext) -> None:
        self._mp, self._ctx = mpc, ctx
        self.groups: list[GroupProcess] = []
        self._named = 0

    def worker_for(
        self, cfg: SourceConfig, limits: SupervisorConfig, engine_on_gpu: bool, policy: RestartPolicy
    ) -> SourceProcess:
        """What the supervisor keeps for stream `cfg` (not started yet)."""
        kind = decoder_kind(cfg, engine_on_gpu)
        size = limits.nvdec_streams_per_process if kind == "nvdec" else limits.cpu_streams_per_process
        fits = [g for g in self.groups if g.kind == kind and g.size == size and not g.stopping]
        home = next((g for g in fits if cfg.id in g.members), None)  # a changed stream keeps its place
        self._forget(cfg.id)
        self.groups = [g for g in self.groups if g.members or g.proc is not None]
        if size == 1:
            return SourceProcess(self._mp, cfg, self._ctx, policy)
        group = home or next((g for g in fits if len(g.streams()) < size), None)
        if group is None:
            group = GroupProcess(self._mp, self._ctx, f"{kind}{self._named}", kind, size)
            self._named += 1
            self.groups.append(group)
        member = GroupMember(self._mp, cfg, self._ctx, policy, group)
        group.members[cfg.id] = member  # (takes its place now: the next stream placed sees it)
        return member

    def _forget(self, sid: str) -> None:
        """Drop a stopped earlier member of stream `sid` (a reload replaces it)."""
        for group in self.groups:
            old = group.members.get(sid)
            if old is not None and not old.running:
                del group.members[sid]

    def close(self, timeout: float) -> None:
        for group in self.groups:
            group.close(timeout)
