"""The supervisor: starts the inference worker and one source worker per stream, watches them, stops them.

Signal handlers only record the signal (through `signal.set_wakeup_fd`); the main loop acts on it.
Stopping is orderly: sources are told to stop and joined, then the inference worker is told to finish
the frames already decoded, publish them and exit; finally the run directory (frame rings, sockets) is
removed, so nothing is left in ``/dev/shm``. A source worker that dies is reported as an ``error`` event
of its stream and the other streams go on. The daemon exits by itself when every stream has ended.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.errors import EXIT_FAILURE, EXIT_OK, ModelError
from streamer.logs import setup_main
from streamer.messages import EVENT_ERROR, Shutdown, StreamEvent
from streamer.models.registry import ensure_model
from streamer.transport.notify import NotifySender
from streamer.workers.common import WorkerContext
from streamer.workers.inference import run_inference
from streamer.workers.source import EXIT_SOURCE_FAILED, run_source

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from streamer.config import Config, SourceConfig

log = logging.getLogger(__name__)

RUN_DIR_PREFIX = "yolostream-"
SOURCE_JOIN_S = 5.0
INFERENCE_DRAIN_S = 60.0


def _source_entry(cfg: SourceConfig, ctx: WorkerContext) -> None:
    raise SystemExit(run_source(cfg, ctx))


def _inference_entry(cfg: Config, model: Path, ctx: WorkerContext, ready: Any) -> None:
    raise SystemExit(run_inference(cfg, model, ctx, ready))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


def shm_root() -> Path:
    """Where run directories live: a tmpfs, so frame rings are shared memory."""
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


def remove_stale_run_dirs(root: Path) -> None:
    """Remove run directories left by daemons that were killed (their pid is gone)."""
    for path in root.glob(f"{RUN_DIR_PREFIX}*"):
        pid = path.name[len(RUN_DIR_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        log.info("removing %s, left behind by a daemon that was killed", path)
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class _SourceProc:
    cfg: SourceConfig
    proc: BaseProcess


class Supervisor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._mp = mp.get_context("spawn")
        self._signals: list[int] = []
        self._sources: dict[str, _SourceProc] = {}
        self._failed: set[str] = set()
        self._ended: set[str] = set()
        self._said_exit: set[str] = set()  # workers that exited on their own, so sent their SourceExit

    def run(self) -> int:
        handler = setup_main(self.cfg.logging.level, self.cfg.logging.format)
        log_queue = self._mp.Queue()
        listener = logging.handlers.QueueListener(log_queue, handler, respect_handler_level=False)
        listener.start()
        root = shm_root()
        remove_stale_run_dirs(root)
        run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-", dir=root))
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_wakeup = signal.set_wakeup_fd(wake_w.fileno())
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        notify: NotifySender | None = None
        try:
            endpoint = f"ipc://{run_dir}/notify.sock"
            notify = NotifySender(endpoint)
            ctx = WorkerContext(
                str(run_dir), endpoint, log_queue, self.cfg.logging.level, self._mp.Event(), os.getpid()
            )
            return self._supervise(ctx, notify, wake_r)
        finally:
            if notify is not None:
                notify.close()
            signal.set_wakeup_fd(old_wakeup)
            for sig, old in old_handlers.items():
                signal.signal(sig, old)
            wake_r.close()
            wake_w.close()
            shutil.rmtree(run_dir, ignore_errors=True)
            listener.stop()
            log_queue.close()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)

    def _supervise(self, ctx: WorkerContext, notify: NotifySender, wake: socket.socket) -> int:
        cfg = self.cfg
        try:
            model = cfg.model.onnx if cfg.model.onnx is not None else ensure_model(cfg.model.name or "")
        except ModelError as exc:
            log.error("%s", exc)
            return EXIT_FAILURE
        log.info(
            "yolostream starting: model %s, backend %s, %d stream(s): %s",
            model,
            cfg.engine.backend,
            len(cfg.sources),
            ", ".join(f"{s.id}={s.display_url}" for s in cfg.sources),
        )
        # The inference worker has its own stop event: it must outlive the sources to drain their frames.
        infer_ctx = WorkerContext(
            ctx.run_dir, ctx.notify_endpoint, ctx.log_queue, ctx.log_level, self._mp.Event(), ctx.parent_pid
        )
        ready = self._mp.Event()
        inference = self._mp.Process(
            target=_inference_entry, args=(cfg, model, infer_ctx, ready), name="inference"
        )
        inference.start()
        while not ready.wait(0.1):
            if not inference.is_alive():
                log.error(
                    "the inference worker failed to start (%s); see the error above",
                    _describe_exit(inference.exitcode),
                )
                return EXIT_FAILURE
            if self._take_signals(wake):
                log.info("stopped before the model was loaded")
                infer_ctx.stop.set()
                inference.join(10)
                _kill(inference)
                return EXIT_OK
        log.info("inference worker ready; starting %d source worker(s)", len(cfg.sources))
        for scfg in cfg.sources:
            proc = self._mp.Process(target=_source_entry, args=(scfg, ctx), name=f"source:{scfg.id}")
            proc.start()
            self._sources[scfg.id] = _SourceProc(scfg, proc)

        exit_code = EXIT_OK
        while True:
            sentinels: list[int | socket.socket] = [p.proc.sentinel for p in self._sources.values()]
            sentinels += [inference.sentinel, wake]
            mp.connection.wait(sentinels, timeout=1.0)
            if self._take_signals(wake):
                log.info("signal received: stopping")
                break
            self._reap_sources(notify)
            if not inference.is_alive():
                log.error("the inference worker died (%s); stopping", _describe_exit(inference.exitcode))
                exit_code = EXIT_FAILURE
                break
            if not self._sources:
                if self._failed and not self._ended:
                    log.error("every stream failed; nothing left to do")
                    exit_code = EXIT_FAILURE
                else:
                    log.info("all streams have ended")
                break
        self._stop_sources(ctx, notify)
        self._stop_inference(inference, infer_ctx, notify)
        log.info("yolostream stopped")
        return exit_code

    def _take_signals(self, wake: socket.socket) -> bool:
        with contextlib.suppress(BlockingIOError):
            while wake.recv(64):
                pass
        got = bool(self._signals)
        self._signals.clear()
        return got

    def _reap_sources(self, notify: NotifySender) -> None:
        for sid, sp in list(self._sources.items()):
            code = sp.proc.exitcode
            if code is None:
                continue
            sp.proc.join()
            del self._sources[sid]
            if code >= 0:
                self._said_exit.add(sid)
            if code == EXIT_OK:
                self._ended.add(sid)
                continue
            self._failed.add(sid)
            if code == EXIT_SOURCE_FAILED:
                continue  # it published its own error event
            reason = f"source worker {_describe_exit(code)}"
            log.error("stream %s: %s; the other streams go on", sid, reason)
            notify.send(StreamEvent(sid, EVENT_ERROR, reason, detail={"exitcode": code}))

    def _stop_sources(self, ctx: WorkerContext, notify: NotifySender) -> None:
        ctx.stop.set()
        deadline = time.monotonic() + SOURCE_JOIN_S
        for sp in self._sources.values():
            sp.proc.join(max(0.0, deadline - time.monotonic()))
            if sp.proc.is_alive():
                log.warning(
                    "stream %s: source worker did not stop in %.0f s; killing it", sp.cfg.id, SOURCE_JOIN_S
                )
                _kill(sp.proc)
        self._reap_sources(notify)

    def _stop_inference(self, inference: BaseProcess, ctx: WorkerContext, notify: NotifySender) -> None:
        if not inference.is_alive():
            return
        # Sources that exited normally sent a SourceExit on their own connection; the inference worker
        # waits (bounded) for those so that no frame announced before it is lost.
        notify.send(Shutdown(expect_exits=sorted(self._said_exit)))
        inference.join(INFERENCE_DRAIN_S)
        if inference.is_alive():
            log.warning("the inference worker did not finish in %.0f s; stopping it", INFERENCE_DRAIN_S)
            ctx.stop.set()
            inference.join(5)
            _kill(inference)


def _kill(proc: BaseProcess) -> None:
    if proc.is_alive():
        proc.kill()
        proc.join(5)
