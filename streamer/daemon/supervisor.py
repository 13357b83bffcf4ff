"""The supervisor: starts the workers, restarts what crashes, reloads on SIGHUP, talks to systemd, stops.

Signal handlers only record the signal (through `signal.set_wakeup_fd`); the main loop acts on it:

- SIGINT/SIGTERM: orderly stop — sources are told to stop and joined, the inference worker finishes the
  frames already decoded and exits, the run directory (frame rings, sockets) is removed: nothing is left
  in ``/dev/shm``; exit 0.
- SIGHUP: the config file is read again. Invalid: logged, the running config stays. Valid: streams that
  were added start, removed ones stop, changed ones restart, unchanged ones are not touched; a change of
  model, engine, detection or publish settings restarts the inference worker.

A worker that crashes is restarted with exponential backoff, at most `supervisor.max_restarts` times per
`restart_window_s` (`streamer.daemon.restart`); a source that gives up is an ``error`` event of its stream and
the others go on. When the inference worker restarts, the sources are told (the shared *epoch*) to take back
the frame slots the dead worker held. A worker whose memory exceeds its configured limit is recycled between
frames. The daemon exits by itself when every stream has ended.

Under systemd (``Type=notify``) it sends READY=1 once the workers are up, STATUS= with the streams' states,
WATCHDOG=1 only while the pipeline makes progress, RELOADING=1 and STOPPING=1 (`streamer.daemon.sdnotify`).
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
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.daemon.heartbeat import is_warm, silent_for, stalled_sources
from streamer.daemon.inference_workers import DevicesError, InferenceWorker, make_workers, move_ledger
from streamer.daemon.placement import LoadMeter, Placement, PlacementError
from streamer.daemon.processes import SOURCE_JOIN_S, SourceProcess, describe_exit, kill_stalled, policy_of
from streamer.daemon.recycle import MemoryBudgets
from streamer.daemon.reload import plan
from streamer.daemon.run_dir import make_run_dir
from streamer.daemon.sdnotify import SystemdNotifier, SystemdReport
from streamer.daemon.signals import STOP_SIGNALS, SignalInbox
from streamer.errors import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, ConfigError, ModelError
from streamer.logs import setup_main
from streamer.messages import EVENT_ERROR, EVENT_MOVED, Shutdown, StreamEvent
from streamer.models.registry import ensure_model_apart, resolve
from streamer.observability.endpoint import Endpoint
from streamer.observability.health import Snapshot, build_snapshot
from streamer.observability.status import RunStatus, merge_statuses, read_status
from streamer.workers.ledger import ledger_dir

if TYPE_CHECKING:
    from streamer.config import Config
    from streamer.output.forwarder import Forwarder

log = logging.getLogger(__name__)


def check_key_files(cfg: Config) -> str | None:
    """Read the CURVE key files the config names (before any worker starts): what is wrong, or None."""
    if cfg.publish.curve is None:
        return None
    from streamer.output.key_files import KeyFileError
    from streamer.output.security import CurveServer

    try:
        CurveServer.from_config(cfg.publish.curve)
    except KeyFileError as exc:
        return f"publish.curve: {exc}"
    return None


class Supervisor:
    def __init__(self, cfg: Config, notifier: SystemdNotifier | None = None) -> None:
        self.cfg = cfg
        self._mp = mp.get_context("spawn")
        self._notifier = notifier or SystemdNotifier()
        self._sources: dict[str, SourceProcess] = {}
        """Per stream: its own process, or its place in a shared one (`streamer.daemon.decoder_groups`)."""
        self._workers: list[InferenceWorker] = []
        """The inference workers: one, or one per entry of engine.devices
        (`streamer.daemon.inference_workers`)."""
        self._placement = Placement([""])
        self._loads = LoadMeter()
        self._forwarder: Forwarder | None = None
        self._model: Path | None = None
        self._inbox = SignalInbox()
        self._last_status: RunStatus | None = None
        self._systemd = SystemdReport(self._notifier)
        self._budgets = MemoryBudgets()
        self._endpoint: Endpoint | None = None
        self._health = Snapshot()
        """What /healthz, /readyz and /metrics report: replaced (never changed) by the main loop."""
        self._phase = "starting"
        self._loading = False
        self._restarts: Counter[tuple[str, str]] = Counter()
        self._log_queue: Any = (
            None  # the workers' (and a model fetch's) log records, to this process's handler
        )
        self._fleet: Any = None
        """The `streamer.fleet.member.FleetMember` in fleet mode, else None."""
        self._fleet_ids: dict[str, Any] = {}
        """The fleet cameras running here: id → the source entry they run with."""

    # -- set-up and tear-down ----------------------------------------------------------------------

    def run(self) -> int:
        handler = setup_main(self.cfg.logging.level, self.cfg.logging.format)
        log_queue = self._log_queue = self._mp.Queue()
        listener = logging.handlers.QueueListener(log_queue, handler, respect_handler_level=False)
        listener.start()
        run_dir = make_run_dir()
        try:
            with self._inbox:
                try:
                    self._workers = make_workers(self._mp, self.cfg, run_dir, log_queue, policy_of(self.cfg))
                except DevicesError as exc:
                    log.error("%s", exc)
                    return EXIT_CONFIG
                self._placement = Placement([w.name for w in self._workers])
                # before any worker is spawned: they inherit its environment
                self._endpoint = Endpoint(self.cfg.metrics, run_dir, lambda: self._health)
                return self._supervise()
        finally:
            if self._endpoint is not None:
                self._endpoint.close()
            self._notifier.stopping()
            for worker in self._workers:
                worker.close()
            shutil.rmtree(run_dir, ignore_errors=True)
            listener.stop()
            log_queue.close()
            self._notifier.close()

    # -- the main loop -----------------------------------------------------------------------------

    def _model_file(self, cfg: Config) -> Path:
        """The config's ONNX file; a named model not cached yet is fetched by a child process."""
        log_queue, level = self._log_queue, cfg.logging.level
        return resolve(cfg.model, lambda name: ensure_model_apart(name, log_queue=log_queue, log_level=level))

    def _supervise(self) -> int:
        cfg = self.cfg
        problem = check_key_files(cfg)
        if problem is not None:
            log.error("%s", problem)
            return EXIT_CONFIG
        try:
            self._model = self._model_file(cfg)
        except ModelError as exc:
            log.error("%s", exc)
            return EXIT_FAILURE
        streams = ", ".join(f"{s.id}={s.display_url}" for s in cfg.sources)
        log.info(
            "yolostream starting: model %s, backend %s, %d stream(s): %s",
            self._model,
            cfg.engine.backend,
            len(cfg.sources),
            streams,
        )
        self._start_fleet()  # (counted among the members now; claims once the model is loaded)
        if (len(self._workers) > 1 and not self._start_forwarder()) or not self._start_inference(
            self._workers
        ):
            if self._fleet is not None:
                self._fleet.close()
            return EXIT_FAILURE if not self._inbox.stopping() else EXIT_OK
        for w in self._workers:
            starting = f"; starting {len(cfg.sources)} source worker(s)" if len(self._workers) == 1 else ""
            log.info("%s ready (pid %s)%s", w.label.removeprefix("the "), w.process.pid, starting)
        for scfg in cfg.sources:
            self._add_source(scfg)
        if self._fleet is not None:
            self._fleet.ready.set()
        self._phase = "running"
        self._notifier.ready(f"{len(cfg.sources)} stream(s) starting")

        exit_code = EXIT_OK
        while True:
            self._wait()
            signals = self._inbox.take()
            if any(s in STOP_SIGNALS for s in signals):
                log.info("signal received: stopping")
                break
            if signal.SIGHUP in signals:
                self._reload()
            self._sync_fleet()
            self._reap_sources()
            if not all(self._reap_inference(w) for w in self._workers if not w.failed):
                exit_code = EXIT_FAILURE
                break
            self._start_due()
            self._check_heartbeats()
            self._budgets.check(self.cfg.supervisor, self._sources.values(), self._workers)
            self._report()
            if self._fleet is None and all(s.done for s in self._sources.values()):
                if self._sources and all(s.done and s.failed for s in self._sources.values()):
                    log.error("every stream failed; nothing left to do")
                    exit_code = EXIT_FAILURE
                else:
                    log.info("all streams have ended")
                break
        self._phase = "stopping"
        self._publish_health()
        self._notifier.stopping()
        self._stop_sources(list(self._sources.values()))
        for w in self._workers:
            w.groups.close(SOURCE_JOIN_S)
        self._stop_inference()
        if self._forwarder is not None:
            self._forwarder.close()
        if self._fleet is not None:
            self._fleet.close()  # releases the leases: the cameras have stopped here
        log.info("yolostream stopped")
        return exit_code

    def _wait(self) -> None:
        timeout = 1.0
        now = time.monotonic()
        dues = [s.restart_at for s in self._sources.values()]
        dues += [w.process.restart_at for w in self._workers if not w.failed]
        for due in dues:
            if due is not None:
                timeout = min(timeout, max(0.0, due - now))
        if self._notifier.watchdog_interval:
            timeout = min(timeout, self._notifier.watchdog_interval / 2)
        # (dict: the streams of a decoder group share its process's sentinel and pipe)
        waitables: list[Any] = list(dict.fromkeys(w for s in self._sources.values() for w in s.waitables()))
        waitables += [w.process.proc.sentinel for w in self._workers if w.process.proc is not None]
        waitables.append(self._inbox.wake)
        mp.connection.wait(waitables, timeout=timeout)

    # -- inference workers -------------------------------------------------------------------------

    def _start_forwarder(self) -> bool:
        """Bind publish.endpoint here, relaying the workers' publishers (`streamer.output.forwarder`)."""
        from streamer.output.forwarder import Forwarder, worker_endpoint
        from streamer.output.publish import PublishError

        try:
            self._forwarder = Forwarder(
                self.cfg.publish, [worker_endpoint(w.ctx.run_dir) for w in self._workers]
            )
        except PublishError as exc:
            log.error("%s (publish.endpoint)", exc)
            return False
        names = ", ".join(f"{w.name} ({w.device})" for w in self._workers)
        log.info("%d inference workers: %s; their messages leave through %s", len(self._workers), names,
                 self._forwarder.endpoint)  # fmt: skip
        return True

    def _start_inference(self, workers: list[InferenceWorker]) -> bool:
        """Start (or restart) inference workers and wait for their models; False if one failed or we stop.

        All start before any is waited for: several workers load their models at the same time."""
        model = self._model
        assert model is not None, "the model file is known before an inference worker starts"
        for w in workers:
            w.process.start(w.config(self.cfg), model)
        self._loading = True
        try:
            return all(self._wait_ready(w) for w in workers)
        finally:
            self._loading = False

    def _wait_ready(self, w: InferenceWorker) -> bool:
        inference = w.process
        if inference.wait_ready(self._waiting_for_model):
            w.ready_at = time.monotonic()
            return True
        if inference.alive():  # a stop signal came while the model was loading
            log.info("stopped before the model was loaded")
            inference.stop_event.set()
            if inference.proc is not None:
                inference.proc.join(10)
            return False
        log.error("%s failed to start (%s); see the error above", w.label,
                  describe_exit(inference.proc.exitcode if inference.proc else None))  # fmt: skip
        return False

    def _reap_inference(self, w: InferenceWorker) -> bool:
        """Handle an exited inference worker; False if the daemon must stop (it cannot be restarted)."""
        inference = w.process
        pid = inference.pid
        code = inference.exited()
        if code is not None:
            self._process_exited(pid)
            if inference.planned and code == EXIT_OK:
                inference.restart_at = time.monotonic()
            else:
                delay = inference.tracker.crashed()
                if delay is None:
                    if len([x for x in self._workers if not x.failed]) > 1:
                        return self._evacuate(w, code)
                    log.error("%s died (%s) and was restarted too often; stopping", w.label,
                              describe_exit(code))  # fmt: skip
                    return False
                log.error("%s died (%s); restarting it in %.1f s; the sources keep going", w.label,
                          describe_exit(code), delay)  # fmt: skip
                inference.restart_at = time.monotonic() + delay
            w.bump_epoch()
        if inference.restart_at is not None and time.monotonic() >= inference.restart_at:
            if not self._start_inference([w]):
                return self._inbox.stopping()
            log.info("%s restarted (pid %s)", w.label.removeprefix("the "), inference.pid)
            self._restarts["inference", w.name] += 1
            for event in w.after_restart:
                w.notify.send(event)
            w.after_restart = []
        return True

    def _evacuate(self, w: InferenceWorker, code: int) -> bool:
        """Worker `w` failed for good: move its streams to the other workers, each with a ``moved`` event."""
        w.failed = True
        try:
            moved = self._placement.evacuate(w.index, self._loads.rates)
        except PlacementError as exc:
            log.error("%s", exc)
            return False
        p = w.process.tracker.policy
        log.error(
            "%s died (%s), restarted %d times in %.0f s: giving up on it; its %d stream(s) move to the "
            "other workers", w.label, describe_exit(code), p.max_restarts, p.window_s, len(moved),
        )  # fmt: skip
        running = {sid: self._sources[sid] for sid in moved if sid in self._sources}
        ended = {sid for sid, s in running.items() if s.done}
        self._stop_sources([s for sid, s in running.items() if sid not in ended])
        scfgs = {s.id: s for s in self.cfg.sources}
        for sid, index in moved.items():
            target = self._workers[index]
            move_ledger(sid, w, target)
            message = f"inference worker {w.name} failed; the stream moved to inference worker {target.name}"
            detail: dict[str, str | int | float] = {"from": w.name, "to": target.name}
            log.warning("stream %s: %s", sid, message)
            target.notify.send(StreamEvent(sid, EVENT_MOVED, message, detail=detail))
            if sid not in ended and sid in scfgs:
                self._sources.pop(sid, None)
                self._add_source(scfgs[sid])
        return True

    def _stop_inference(self) -> None:
        # Sources that exited on their own sent a SourceExit on their own connection: the inference
        # worker waits (bounded) for those so that no frame announced before it is lost.
        for w in self._workers:
            if w.failed:
                continue
            mine = set(self._placement.streams_of(w.index))
            said_exit = sorted(
                s.cfg.id for s in self._sources.values() if s.exit_was_clean and s.cfg.id in mine
            )
            notify = w.notify
            w.process.drain_and_join(lambda: notify.send(Shutdown(expect_exits=said_exit)))  # noqa: B023

    def _worker_of(self, sid: str) -> InferenceWorker:
        """The inference worker that carries stream `sid` (the first one for a stream never placed)."""
        return self._workers[self._placement.assignment.get(sid, 0)]

    # -- fleet mode --------------------------------------------------------------------------------

    def _start_fleet(self) -> None:
        if self.cfg.fleet is None:
            return
        from streamer.fleet.member import FleetMember

        self._fleet = FleetMember(self.cfg.fleet, {s.id for s in self.cfg.sources}, self._poke)
        self._fleet.running(set())
        self._fleet.start()

    def _poke(self) -> None:
        """Wake the main loop (from the fleet thread): the leased cameras changed."""
        self._inbox.poke()

    def _sync_fleet(self) -> None:
        """Start the cameras leased to this daemon and stop those it no longer holds (or that changed)."""
        if self._fleet is None:
            return
        wanted = self._fleet.wanted()
        gone = [cid for cid, scfg in self._fleet_ids.items() if wanted.get(cid) != scfg]
        for cid in gone:
            if cid in self._sources:
                self._sources[cid].removed = True
        if gone:
            log.info("fleet: stopping camera(s) %s", ", ".join(gone))
            self._stop_sources([self._sources[cid] for cid in gone if cid in self._sources])
            for cid in gone:
                self._sources.pop(cid, None)
                del self._fleet_ids[cid]
                self._forget(cid)
        for cid, scfg in wanted.items():
            if cid not in self._fleet_ids and cid not in self._sources:
                log.info("fleet: starting camera %s", cid)
                self._fleet_ids[cid] = scfg
                self._add_source(scfg)
        self._fleet.running(set(self._fleet_ids))  # (a camera handed over is released once stopped)

    # -- source workers ----------------------------------------------------------------------------

    def _add_source(self, scfg: Any) -> None:
        """Place stream `scfg` on an inference worker (kept where it is if placed before) and start it."""
        pinned = scfg.device if len(self._workers) > 1 else None  # (one worker: it carries every stream)
        index, why = self._placement.place(scfg.id, self._loads.rates, pinned)
        lane = self._workers[index]
        if len(self._workers) > 1 and why != "already placed":
            log.info("stream %s → inference worker %s: %s", scfg.id, lane.name, why)
        on_gpu = bool(lane.ctx.engine_on_gpu.value)
        worker = lane.groups.worker_for(scfg, self.cfg.supervisor, on_gpu, policy_of(self.cfg))
        self._sources[scfg.id] = worker
        worker.start()

    def _forget(self, sid: str) -> None:
        """Stream `sid` is gone for good (removed by a reload, or no longer leased here): a stream of that
        id added later starts from nothing: no frame ledger, no placement, no load."""
        (ledger_dir(self._worker_of(sid).run_dir) / sid).unlink(missing_ok=True)
        self._placement.forget(sid)
        self._loads.forget(sid)

    def _reap_sources(self) -> None:
        for sid, worker in list(self._sources.items()):
            pid = worker.pid
            code = worker.exited()
            if code is None:
                continue
            self._process_exited(pid)
            worker.exit_was_clean = code >= 0
            self._remove_rings(sid)
            reason = worker.on_exit(code)
            if reason is not None:
                log.error("stream %s: %s; the other streams go on", sid, reason)
                self._worker_of(sid).notify.send(
                    StreamEvent(sid, EVENT_ERROR, reason, detail={"exitcode": code})
                )
            if worker.done:
                self._loads.rates[sid] = 0.0  # (it no longer loads its worker)
            if worker.removed:
                del self._sources[sid]

    def _remove_rings(self, sid: str) -> None:
        """Delete the ring files of a stream's exited worker (the inference worker keeps its mappings)."""
        for path in (p for w in self._workers for p in w.run_dir.glob(f"{sid}.*.ring")):
            with contextlib.suppress(OSError):
                owner = int(path.name.split(".")[1])
                if not Path(f"/proc/{owner}").exists():
                    path.unlink()

    def _start_due(self) -> None:
        now = time.monotonic()
        for worker in self._sources.values():
            if worker.restart_at is not None and now >= worker.restart_at and not worker.alive():
                worker.start()
                log.info("stream %s: source worker restarted", worker.cfg.id)
                self._restarts["source", worker.cfg.id] += 1

    def _stop_sources(self, workers: list[SourceProcess]) -> None:
        for worker in workers:
            worker.ask_to_stop(planned=False)
        deadline = time.monotonic() + SOURCE_JOIN_S
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._reap_sources()

    # -- heartbeats, status, health ----------------------------------------------------------------

    def _check_heartbeats(self) -> None:
        """Kill (for a restart) each worker whose loop stopped advancing (`streamer.daemon.heartbeat`)."""
        limits = self.cfg.supervisor
        if not limits.heartbeat_timeout_s:
            return
        timeout_s, startup_s = limits.heartbeat_timeout_s, limits.heartbeat_startup_s
        for what, silent, sids, proc in stalled_sources(self._sources.items(), timeout_s, startup_s):
            lane = self._worker_of(sids[0])
            for event in kill_stalled(proc, what, silent, sids, lane.ctx.run_dir):
                lane.notify.send(event)
        if self._loading:
            return
        for w in self._workers:
            inference = w.process
            if w.failed or not inference.alive():
                continue
            limit = limits.heartbeat_timeout_s
            if not is_warm(inference.heartbeat):  # its first batch may be compiling the engine
                limit = max(limit, limits.heartbeat_startup_s)
            if (silent := silent_for(inference.heartbeat, since=w.ready_at)) > limit:
                streams = [
                    s.id for s in self.cfg.sources if self._placement.assignment.get(s.id, 0) == w.index
                ]
                w.after_restart += kill_stalled(inference.proc, w.label, silent, streams, w.ctx.run_dir)

    def _report(self) -> None:
        """Read the workers' status files; tell systemd and the HTTP endpoint."""
        status = merge_statuses([read_status(w.status_path) for w in self._workers if not w.failed])
        now = time.monotonic()
        if status is not None:
            if self._forwarder is not None:  # (each worker counts the forwarder: one subscription)
                status.subscriptions = self._forwarder.subscribers
            self._last_status = status
            self._loads.update(now, {k: (s.published, s.width, s.height) for k, s in status.streams.items()})
        self._publish_health()
        self._systemd.progress(status, now)

    # -- metrics and health ------------------------------------------------------------------------

    def _process_exited(self, pid: int | None) -> None:
        if self._endpoint is not None:
            self._endpoint.process_exited(pid)

    def _waiting_for_model(self) -> bool:
        """`wait_ready`'s poll (every 0.1 s): /healthz keeps answering while the model loads, and systemd
        is told that loading goes on."""
        self._publish_health()
        self._systemd.loading(time.monotonic())
        return self._inbox.stopping()

    def _publish_health(self) -> None:
        if self._endpoint is None or self._endpoint.server is None:
            return
        self._health = build_snapshot(
            self._health,
            phase=self._phase,
            inference=[w.process for w in self._workers if not w.failed],
            loading=self._loading,
            ready_at=min((w.ready_at for w in self._workers if not w.failed), default=0.0),
            sources=self._sources,
            stream_ids=[s.id for s in self.cfg.sources] + list(self._fleet_ids),
            status=self._last_status,
            restarts=self._restarts,
            supervisor_pid=os.getpid(),
            placement={sid: self._workers[i].name for sid, i in self._placement.assignment.items()}
            if len(self._workers) > 1
            else {},
            forwarder=(self._forwarder.subscribers, self._forwarder.dropped) if self._forwarder else None,
            fleet=self._fleet.stats() if self._fleet is not None else None,
        )

    # -- SIGHUP ------------------------------------------------------------------------------------

    def _reload(self) -> None:
        from streamer.config import load_config

        path = self.cfg.source_path
        if path is None:
            log.error("SIGHUP: this config was not read from a file; nothing to reload")
            return
        self._notifier.reloading()
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("SIGHUP: %s is invalid; keeping the running config:\n%s", path, exc)
            self._notifier.ready("reload rejected: invalid config")
            return
        problem = check_key_files(new)
        if problem is not None:
            log.error("SIGHUP: %s; keeping the running config", problem)
            self._notifier.ready("reload rejected: bad key file")
            return
        change = plan(self.cfg, new, forwarder=self._forwarder is not None)
        for deferred in change.deferred:
            log.warning("SIGHUP: %s", deferred)
        self.cfg = new
        log.info("SIGHUP: reloaded %s: %s", path, change.summary())
        logging.getLogger().setLevel(new.logging.level)
        removed, changed = change.removed, change.changed
        new_sources = {s.id: s for s in new.sources}
        for sid in removed + changed:
            self._sources[sid].removed = sid in removed
        self._stop_sources([self._sources[sid] for sid in removed + changed])
        for sid in removed:
            self._forget(sid)
        for sid in changed + change.added:
            self._sources.pop(sid, None)
            self._add_source(new_sources[sid])
        if change.restart_inference:
            try:
                self._model = self._model_file(new)
            except ModelError as exc:
                log.error("SIGHUP: %s; the inference worker keeps the previous model", exc)
            for w in self._workers:
                if not w.failed:
                    w.restart_planned()
        self._notifier.ready(f"reloaded: {len(new.sources)} stream(s)")
