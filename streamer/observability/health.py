"""The supervisor's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``; the streams'
pictures (``/``, ``/streams/<id>/latest.jpg``, ``/streams/<id>/live``: `streamer.observability.web`).

The workers write their metrics into the run directory's ``metrics/`` folder (prometheus-client's multiprocess
mode, see `streamer.observability.metrics`); a scrape adds those up and appends what only the supervisor
knows, computed at scrape time from the latest `Snapshot` of its state: each stream's state, the workers'
restarts and memory, the age of the inference worker's status file.

The supervisor's main loop makes a new, immutable `Snapshot` every iteration (at least once a second) and
the server thread only reads the latest one, so the HTTP thread never touches the supervisor's live state.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.observability.names import (
    FORWARDER_OVERFLOWS,
    FORWARDER_SUBSCRIPTIONS,
    PREFIX,
    PROCESS_GPU,
    PROCESS_RSS,
    STREAM_DECODER,
    STREAM_DEVICE,
    STREAM_STATE,
    UPTIME,
    WORKER_RESTARTS,
)
from streamer.observability.process_memory import gpu_memory_by_pid, rss_mb

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from streamer.daemon.processes import InferenceProcess, SourceProcess
    from streamer.fleet.member import FleetStats
    from streamer.observability.status import RunStatus

log = logging.getLogger(__name__)

STATUS_STALE_S = 5.0
"""The inference worker writes its status every second: older than this, it is stuck."""
LOOP_STALE_S = 15.0
"""The supervisor's loop turns at least once a second, but a reload may wait up to 10 s for a source."""
STREAM_STATES = ("starting", "running", "reconnecting", "down", "frozen", "restarting", "ended", "failed")


@dataclass(frozen=True)
class WorkerView:
    worker: str
    """``supervisor``, ``inference`` (``inference:gpu0``... with ``engine.devices``), ``source`` or
    ``decoders`` (a source worker shared by streams)."""
    stream: str
    """The stream of a source worker (a decoder group's streams, comma-separated); empty for the others."""
    pid: int | None
    restarts: int


@dataclass(frozen=True)
class Snapshot:
    """The supervisor's state as the HTTP endpoint reports it."""

    made: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.time)
    """When the daemon started (Unix time)."""
    phase: str = "starting"
    """``starting`` (until the workers are up), ``running``, ``stopping``."""
    inference: str = "loading"
    """``loading`` (its model), ``ready``, ``restarting`` (crashed, waiting for its restart), ``stopped``."""
    inference_ready_at: float = 0.0
    """Monotonic time at which the current inference worker became ready."""
    status: RunStatus | None = None
    streams: Mapping[str, str] = field(default_factory=dict)
    """Stream id → state (one of `STREAM_STATES`), in config order."""
    decoders: Mapping[str, str] = field(default_factory=dict)
    """Stream id → ``cpu`` or ``nvdec``, for the streams that have started."""
    workers: tuple[WorkerView, ...] = ()
    placement: Mapping[str, str] = field(default_factory=dict)
    """Stream id → the name of the inference worker that carries it (only with ``engine.devices``)."""
    forwarder: tuple[int, int] | None = None
    """The publish forwarder's (subscriptions, overflows), with ``engine.devices``
    (`streamer.output.forwarder`)."""
    fleet: FleetStats | None = None
    """The fleet member's lease counts, in fleet mode (`streamer.fleet.member`)."""


def build_snapshot(
    base: Snapshot,
    *,
    phase: str,
    inference: Sequence[InferenceProcess],
    loading: bool,
    ready_at: float,
    sources: Mapping[str, SourceProcess],
    stream_ids: Iterable[str],
    status: RunStatus | None,
    restarts: Mapping[tuple[str, str], int],
    supervisor_pid: int,
    placement: Mapping[str, str] | None = None,
    forwarder: tuple[int, int] | None = None,
    fleet: FleetStats | None = None,
) -> Snapshot:
    """A new `Snapshot` from the supervisor's state (`base` gives the start time)."""
    streams: dict[str, str] = {}
    decoders: dict[str, str] = {}
    for sid in dict.fromkeys([*stream_ids, *sources]):
        worker = sources.get(sid)
        heard = status.streams.get(sid) if status is not None else None
        if heard is not None and heard.decoder:
            decoders[sid] = heard.decoder
        if worker is not None and worker.done:
            state = "failed" if worker.failed else "ended"
        elif worker is not None and worker.restart_at is not None:
            state = "restarting"
        else:
            state = heard.state if heard is not None else "starting"
        streams[sid] = state
    if loading:
        inference_state = "loading"
    elif inference and all(p.alive() for p in inference):
        inference_state = "ready"
    elif any(p.restart_at is not None for p in inference):
        inference_state = "restarting"
    else:
        inference_state = "stopped"
    workers = [WorkerView("supervisor", "", supervisor_pid, 0)]
    for p in inference:
        kind = f"inference:{p.name}" if p.name else "inference"
        workers.append(WorkerView(kind, "", p.pid, restarts.get(("inference", p.name), 0)))
    processes: dict[tuple[str, str], list[str]] = {}
    for sid, w in sources.items():
        processes.setdefault(w.process_key(), []).append(sid)
    for (kind, _name), sids in processes.items():  # a decoder group: one row for its streams
        pid = next((p for p in (sources[sid].pid for sid in sids) if p is not None), None)
        count = max(restarts.get(("source", sid), 0) for sid in sids)
        workers.append(WorkerView(kind, ",".join(sids), pid, count))
    return Snapshot(
        started=base.started,
        phase=phase,
        inference=inference_state,
        inference_ready_at=ready_at,
        status=status,
        streams=streams,
        decoders=decoders,
        workers=tuple(workers),
        placement=dict(placement or {}),
        forwarder=forwarder,
        fleet=fleet,
    )


# ------------------------------------------------------------------------------------------ health checks


def health(snap: Snapshot, now: float | None = None, wall: float | None = None) -> tuple[bool, str]:
    """``/healthz``: is the daemon alive and making progress? ``(healthy, reason)``.

    Healthy while it starts and while the inference worker loads its model; then only while the
    supervisor's loop turns and the inference worker's status file is fresh.
    """
    now = time.monotonic() if now is None else now
    wall = time.time() if wall is None else wall
    if now - snap.made > LOOP_STALE_S:
        return False, f"the supervisor's loop has not run for {now - snap.made:.0f} s"
    if snap.phase == "starting" or snap.inference == "loading":
        return True, "starting: the inference worker is loading the model"
    if snap.inference == "restarting":
        return False, "the inference worker died and is being restarted"
    if snap.inference == "stopped":
        return snap.phase == "stopping", "stopping" if snap.phase == "stopping" else "no inference worker"
    if now - snap.inference_ready_at < STATUS_STALE_S:
        return True, "ok (the inference worker just started)"
    if snap.status is None:
        return False, "the inference worker has written no status"
    age = wall - snap.status.time
    if age > STATUS_STALE_S:
        return False, f"the inference worker has written no status for {age:.0f} s: it is stuck"
    return True, "ok"


def readiness(snap: Snapshot) -> tuple[bool, str]:
    """``/readyz``: the inference worker is ready and at least one stream is running. ``(ready, reason)``."""
    if snap.phase != "running":
        return False, snap.phase
    if snap.inference != "ready":
        return False, f"inference worker: {snap.inference}"
    if not any(state == "running" for state in snap.streams.values()):
        return False, "no stream is running"
    return True, "ok"


# ----------------------------------------------------------------------------------- supervisor metrics


class SupervisorCollector:
    """The metrics only the supervisor knows, computed at scrape time from the latest `Snapshot`."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self._snapshot()
        up = GaugeMetricFamily(
            PREFIX + "stream_up", "1 while the stream is running, else 0.", labels=["stream"]
        )
        state = GaugeMetricFamily(
            PREFIX + STREAM_STATE, "The stream's state (1 for the current one).", labels=["stream", "state"]
        )
        for sid, current in snap.streams.items():
            up.add_metric([sid], float(current == "running"))
            for name in STREAM_STATES:
                state.add_metric([sid, name], float(current == name))
        decoder = GaugeMetricFamily(
            PREFIX + STREAM_DECODER,
            "1 for the decoder the stream runs on (cpu, nvdec); nvdec streams fall back to cpu.",
            labels=["stream", "decoder"],
        )
        for sid, name in snap.decoders.items():
            decoder.add_metric([sid, name], 1.0)
        yield up
        yield state
        yield decoder
        if snap.placement:
            device = GaugeMetricFamily(
                PREFIX + STREAM_DEVICE,
                "1 for the inference worker (engine.devices: gpu0, cpu1, ...) that carries the stream.",
                labels=["stream", "device"],
            )
            for sid, name in snap.placement.items():
                device.add_metric([sid, name], 1.0)
            yield device
        restarts = CounterMetricFamily(
            PREFIX + WORKER_RESTARTS,
            "Restarts of a worker after a crash, a stall or a memory recycle.",
            labels=["worker", "stream"],
        )
        rss = GaugeMetricFamily(
            PREFIX + PROCESS_RSS, "Resident memory of each process.",
            labels=["worker", "stream"],
        )  # fmt: skip
        gpu = GaugeMetricFamily(
            PREFIX + PROCESS_GPU,
            "GPU memory used by each process (from nvidia-smi; absent without a GPU).",
            labels=["worker", "stream"],
        )
        on_gpu = gpu_memory_by_pid()
        for w in snap.workers:
            if w.worker != "supervisor":
                restarts.add_metric([w.worker, w.stream], w.restarts)
            used = rss_mb(w.pid)
            if used is not None:
                rss.add_metric([w.worker, w.stream], used * 1024 * 1024)
            if w.pid in on_gpu:
                gpu.add_metric([w.worker, w.stream], on_gpu[w.pid] * 1024 * 1024)
        yield restarts
        yield rss
        yield gpu
        if snap.forwarder is not None:
            subscriptions, overflows = snap.forwarder
            yield GaugeMetricFamily(
                PREFIX + FORWARDER_SUBSCRIPTIONS,
                "Active subscriptions to publish.endpoint, bound by the forwarder of several inference "
                "workers (each worker's own `subscriptions` counts the forwarder).",
                subscriptions,
            )
            yield CounterMetricFamily(
                PREFIX + FORWARDER_OVERFLOWS,
                "Messages at which the forwarder found a subscriber's queue full (as "
                "publish_overflows_total).",
                overflows,
            )
        if snap.fleet is not None:
            yield from _fleet_families(snap.fleet)
        ready = float(snap.inference == "ready")
        yield GaugeMetricFamily(PREFIX + "inference_ready", "1 while the inference worker is ready.", ready)
        uptime = time.time() - snap.started
        yield GaugeMetricFamily(PREFIX + UPTIME, "Seconds since the daemon started.", uptime)
        if snap.status is not None:
            yield GaugeMetricFamily(
                PREFIX + "status_age_seconds",
                "Age of the inference worker's status (written every second; large: it is stuck).",
                max(0.0, time.time() - snap.status.time),
            )


def _fleet_families(stats: FleetStats) -> Iterable[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily(PREFIX + "fleet_leases", "Camera leases this daemon holds now.", stats.leases)
    renewals = CounterMetricFamily(
        PREFIX + "fleet_lease_renewals", "Lease renewals, by result (ok, failed).", labels=["result"]
    )
    renewals.add_metric(["ok"], stats.renewals_ok)
    renewals.add_metric(["failed"], stats.renewals_failed)
    yield renewals
    stopped = CounterMetricFamily(
        PREFIX + "fleet_cameras_stopped",
        "Fleet cameras this daemon stopped while running, by reason (lease_lost, no_renewal, removed, "
        "rebalance).",
        labels=["reason"],
    )
    for reason, count in stats.stopped.items():
        stopped.add_metric([reason], count)
    yield stopped


# ----------------------------------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: Collector
    snapshot: Callable[[], Snapshot]
    pictures: Path | None
    """The run directory's pictures folder; None: no pictures."""
    closing: threading.Event


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "yolostream"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            try:
                text = generate_latest(self.server.registry)
            except Exception as exc:  # a worker's metrics file half-written, say: say so, keep serving
                log.exception("metrics: scrape failed")
                self._send(500, "text/plain; charset=utf-8", f"scrape failed: {exc}\n".encode())
                return
            self._send(200, CONTENT_TYPE_LATEST, text)
        elif path == "/healthz":
            snap = self.server.snapshot()
            ok, reason = health(snap)
            self._json(200 if ok else 503, {"healthy": ok, "reason": reason})
        elif path == "/readyz":
            snap = self.server.snapshot()
            ok, reason = readiness(snap)
            body = {"ready": ok, "reason": reason, "inference": snap.inference, "streams": dict(snap.streams)}
            self._json(200 if ok else 503, body)
        elif path == "/" or path.startswith("/streams/"):
            from streamer.observability import web

            web.serve(self, path)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /, /metrics, /healthz or /readyz\n")

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, "application/json", json.dumps(body).encode() + b"\n")

    def _send(
        self,
        code: int,
        content_type: str,
        body: bytes,
        cache: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        if not cache:
            self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s %s", self.address_string(), format % args)


class MetricsServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread until `close`.

    Parameters:
        host, port: where to listen (port 0: any free port; see `address`).
        metrics_dir: the workers' multiprocess metrics folder (``PROMETHEUS_MULTIPROC_DIR``).
        snapshot: returns the supervisor's latest `Snapshot`.
        pictures: the run directory's pictures folder (`streamer.observability.picture`); None: no pictures.

    Raises:
        OSError: the address cannot be bound (in use, not an address of this host, ...).
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics_dir: Path,
        snapshot: Callable[[], Snapshot],
        pictures: Path | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        self._dir = metrics_dir
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(metrics_dir))
        registry.register(SupervisorCollector(snapshot))
        self._httpd = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        self._httpd.registry = registry
        self._httpd.snapshot = snapshot
        self._httpd.pictures = pictures
        self._httpd.closing = threading.Event()
        self.address: tuple[str, int] = (host, self._httpd.server_address[1])
        """Where it listens (with the port chosen for port 0)."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def process_exited(self, pid: int | None) -> None:
        """Forget the live gauges of a worker that exited (its counters stay in the totals)."""
        if pid is None:
            return
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, str(self._dir))

    def close(self) -> None:
        self._httpd.closing.set()  # (ends the live pictures' loops)
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


__all__ = ["MetricsServer", "Snapshot", "SupervisorCollector", "WorkerView", "build_snapshot", "health"]
