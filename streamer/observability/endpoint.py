"""The supervisor's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``
(`streamer.observability.health`); the streams' pictures (``/``, ``/streams/<id>/latest.jpg``,
``/streams/<id>/live``: `streamer.observability.web`).

The workers write their metrics into the run directory's ``metrics/`` folder (prometheus-client's
multiprocess mode, see `streamer.observability.metrics`); a scrape adds those up and appends what only the
supervisor knows (`streamer.observability.supervisor_metrics`). `Endpoint` is the supervisor's side: it
points the workers at that folder before they are spawned, and serves it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.observability.health import Snapshot, health, readiness
from streamer.observability.picture import PICTURES_DIR
from streamer.observability.supervisor_metrics import SupervisorCollector

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from streamer.config import MetricsConfig

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


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


class Endpoint:
    """The supervisor's endpoint for one run: `MetricsServer` on ``metrics.listen`` (if on) and the
    workers' metrics folder ``run_dir/metrics``, until `close`.

    prometheus-client picks its multiprocess mode when a process imports it: the variable must be in the
    environment before the workers are spawned (they inherit it), so make this first. Without a server it
    is removed, so that no worker writes metrics files that nobody reads; `close` puts back what was there.
    A port that cannot be bound is logged and the daemon runs without metrics and health checks.
    """

    def __init__(self, cfg: MetricsConfig, run_dir: Path, snapshot: Callable[[], Snapshot]) -> None:
        self._env_before = os.environ.pop(MULTIPROC_ENV, None)
        self.server: MetricsServer | None = None
        if cfg.address is None:
            return
        directory = run_dir / "metrics"
        directory.mkdir()
        pictures = run_dir / PICTURES_DIR  # (its presence tells the inference worker to make pictures)
        try:
            self.server = MetricsServer(*cfg.address, directory, snapshot, pictures)
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s (metrics.listen): %s; running without metrics and health "
                "checks",
                cfg.listen,
                exc.strerror or exc,
            )
            return
        os.environ[MULTIPROC_ENV] = str(directory)
        pictures.mkdir()
        log.info(
            "metrics and health checks on %s (/metrics, /healthz, /readyz; the streams' pictures: /)",
            self.server.url,
        )

    def process_exited(self, pid: int | None) -> None:
        if self.server is not None:
            self.server.process_exited(pid)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        os.environ.pop(MULTIPROC_ENV, None)
        if self._env_before is not None:
            os.environ[MULTIPROC_ENV] = self._env_before


__all__ = ["Endpoint", "MetricsServer"]
