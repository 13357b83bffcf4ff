"""A decoder group: several streams in one source worker process, one thread per stream.

Each NVDEC source process creates a CUDA context (~500 MiB of GPU memory, and contexts time-slice the
GPU); a group of K streams shares one. Every stream runs the source worker's own loop
(`streamer.workers.source.serve_stream`: ring, reconnects, pacing, watchdog) in its own thread, so a
stream's failure stays in its thread: it reports and reconnects as it would alone, or its thread ends
and the supervisor is told its exit code, as if its own process had exited.

The supervisor drives the group through a pipe (`GroupCommand` in, `GroupReport` out):

- ``start`` a stream (its config) — at start-up, after a reload, or to restart one stream;
- ``stop`` a stream — it finishes its frame and its thread reports ``ended`` with its code;
- ``ended``: a stream's thread returned (end of file, failure, crash of its loop, or stopped);
- ``stalled``: a stream's decoder blocked past every timeout. That call cannot be interrupted, so the
  whole process exits with `EXIT_SOURCE_STALLED` and the supervisor restarts it with all its streams.

The process ends when the supervisor sets its stop event (all streams stop, no ``ended`` is sent: the
exit code of the process speaks for them), on SIGTERM, or when the supervisor dies.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from streamer.errors import EXIT_FAILURE, EXIT_OK
from streamer.sources import redact
from streamer.workers.common import StopFlag, WorkerContext, heartbeat, start_worker
from streamer.workers.source import exit_stalled, serve_stream

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from streamer.config import SourceConfig

log = logging.getLogger(__name__)

COMMAND_POLL_S = 0.2
"""How often the group's main thread looks at the pipe, its stop event and its streams' threads."""
STREAMS_JOIN_S = 8.0
"""How long a stopping group waits for its streams' threads (the supervisor kills it after 10 s)."""


@dataclass(frozen=True)
class GroupCommand:
    """Supervisor → group."""

    kind: Literal["start", "stop"]
    stream: str
    cfg: SourceConfig | None = None
    """The stream's config (``start`` only)."""


@dataclass(frozen=True)
class GroupReport:
    """Group → supervisor."""

    kind: Literal["ended", "stalled"]
    stream: str
    code: int = EXIT_OK
    """``ended``: the exit code the stream's own source worker would have returned."""


class _Stream:
    """One stream's thread and its own stop flag (set by a ``stop`` command or when the group stops)."""

    def __init__(self, cfg: SourceConfig, ctx: WorkerContext, group: _Group) -> None:
        self.cfg = cfg
        self.stop = StopFlag(ctx)
        self.code: int | None = None
        self.thread = threading.Thread(
            target=self._run, args=(ctx, group), name=f"stream-{cfg.id}", daemon=True
        )

    def _run(self, ctx: WorkerContext, group: _Group) -> None:
        try:
            self.code = serve_stream(
                self.cfg, ctx, self.stop, lambda what, limit: group.stalled(self.cfg.id, what, limit)
            )
        except BaseException:  # serve_stream reports its own errors; this is a bug in the group's glue
            log.error(
                "stream %s: its thread failed:\n%s", self.cfg.id, redact(traceback.format_exc(), self.cfg.url)
            )
            self.code = EXIT_FAILURE


class _Group:
    def __init__(self, name: str, ctx: WorkerContext, conn: Connection, stop: StopFlag) -> None:
        self.name, self.ctx, self.conn, self.stop = name, ctx, conn, stop
        self.streams: dict[str, _Stream] = {}
        self.waiting: dict[str, SourceConfig] = {}
        """Streams to start once their previous thread (being stopped) has ended."""
        self._send_lock = threading.Lock()  # the watchdogs' threads report too

    def send(self, report: GroupReport) -> None:
        with self._send_lock, contextlib.suppress(OSError):  # OSError: the supervisor is gone
            self.conn.send(report)

    def start(self, cfg: SourceConfig) -> None:
        if cfg.id in self.streams:  # restarted before its old thread ended: start when it has
            self.waiting[cfg.id] = cfg
            return
        stream = _Stream(cfg, self.ctx, self)
        self.streams[cfg.id] = stream
        stream.thread.start()

    def command(self, cmd: GroupCommand) -> None:
        if cmd.kind == "start" and cmd.cfg is not None:
            self.start(cmd.cfg)
        elif cmd.kind == "stop":
            self.waiting.pop(cmd.stream, None)
            stream = self.streams.get(cmd.stream)
            if stream is not None:
                stream.stop.set()

    def reap(self) -> None:
        """Report the streams whose thread has ended, and start those waiting for them."""
        for sid, stream in list(self.streams.items()):
            if stream.thread.is_alive():
                continue
            del self.streams[sid]
            code = EXIT_FAILURE if stream.code is None else stream.code
            self.send(GroupReport("ended", sid, code))
            if sid in self.waiting:
                self.start(self.waiting.pop(sid))

    def stalled(self, sid: str, what: str, limit_s: float) -> None:
        """A stream's decoder is stuck in a call that cannot be interrupted: the whole process must go."""
        mates = sorted(set(self.streams) - {sid})
        if mates:
            log.error(
                "decoder group %s: stream %s hung; the group's other stream(s) %s restart with it",
                self.name, sid, ", ".join(mates),
            )  # fmt: skip
        self.send(GroupReport("stalled", sid))
        exit_stalled(sid, self.ctx, what, limit_s)

    def close(self) -> None:
        """Stop every stream and wait for its thread (a thread stuck in FFmpeg is left to the exit)."""
        for stream in self.streams.values():
            stream.stop.set()
        deadline = time.monotonic() + STREAMS_JOIN_S
        for sid, stream in self.streams.items():
            stream.thread.join(max(0.0, deadline - time.monotonic()))
            if stream.thread.is_alive():
                log.warning(
                    "decoder group %s: stream %s did not stop in %.0f s", self.name, sid, STREAMS_JOIN_S
                )


def run_group(name: str, cfgs: list[SourceConfig], ctx: WorkerContext, conn: Connection) -> int:
    """Process entry point of a decoder group: returns the exit code."""
    stop = start_worker(ctx)
    heartbeat().warm()  # from here on the streams' loops beat it: the plain limit applies
    group = _Group(name, ctx, conn, stop)
    log.debug("decoder group %s: starting with %s", name, ", ".join(c.id for c in cfgs))
    try:
        for cfg in cfgs:
            group.start(cfg)
        while not stop.is_set():
            try:
                while conn.poll(COMMAND_POLL_S):
                    group.command(conn.recv())
            except (EOFError, OSError):  # the supervisor closed its end or died
                break
            group.reap()
    finally:
        group.close()
        conn.close()
    return EXIT_OK
