"""Metrics and health: the Prometheus endpoint, /healthz and /readyz, `yolostream status`.

The daemon tests run real daemons (`start_daemon`) with the metrics endpoint on a port the daemon picks
(``listen: 127.0.0.1:0``, read back from its log) and scrape it as Prometheus would.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from streamer.cli.status import StatusError, fetch, parse, quantile, render, url_of_listen
from streamer.config import ConfigError, parse_config
from streamer.observability.endpoint import MetricsServer
from streamer.observability.health import STATUS_STALE_S, Snapshot, WorkerView, health, readiness
from streamer.observability.status import RunStatus, StreamStatus
from tests.support.daemon import Daemon, Samples, start_daemon
from tests.support.daemon import metrics_url as _metrics_url
from tests.support.daemon import scrape as _scrape
from tests.support.daemon import value as _value
from tests.support.media import bright_spot_clip
from tests.support.models import write_oracle_model

# --- the status table ----------------------------------------------------------------------------------


def test_quantile_interpolates_within_buckets_as_prometheus_does() -> None:
    buckets = {0.1: 10.0, 0.2: 30.0, 0.5: 40.0, math.inf: 40.0}
    assert quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: the top of the first bucket
    assert quantile(0.5, buckets) == pytest.approx(0.15)  # rank 20: half-way through (0.1, 0.2]
    assert quantile(0.95, buckets) == pytest.approx(0.2 + 0.3 * 8 / 10)
    assert quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, math.inf: 10.0}) == math.inf  # above the largest finite bound


def _exposition(published: float, latencies: list[float]) -> str:
    """A /metrics text as the daemon writes it (same names and labels), made with prometheus-client."""
    r = CollectorRegistry()
    Counter("yolostream_frames_decoded_total", "", ["stream"], registry=r).labels("cam1").inc(published + 3)
    Counter("yolostream_frames_published_total", "", ["stream"], registry=r).labels("cam1").inc(published)
    dropped = Counter("yolostream_frames_dropped_total", "", ["stream", "reason"], registry=r)
    dropped.labels("cam1", "inference_behind").inc(2)
    dropped.labels("cam1", "ring_full").inc(1)
    dropped.labels("cam1", "stale_slot")
    Counter("yolostream_reconnects_total", "", ["stream"], registry=r).labels("cam1")
    latency = Histogram(
        "yolostream_frame_latency_seconds", "", ["stream"], registry=r, buckets=(0.05, 0.1, 1)
    )
    for seconds in latencies:
        latency.labels("cam1").observe(seconds)
    state = Gauge("yolostream_stream_state", "", ["stream", "state"], registry=r)
    state.labels("cam1", "running").set(1)
    state.labels("cam1", "down").set(0)
    Gauge("yolostream_stream_decoder", "", ["stream", "decoder"], registry=r).labels("cam1", "nvdec").set(1)
    rss = Gauge("yolostream_process_resident_memory_bytes", "", ["worker", "stream"], registry=r)
    rss.labels("supervisor", "").set(70 * 2**20)
    rss.labels("source", "cam1").set(99 * 2**20)
    rss.labels("decoders", "cam2,cam3").set(380 * 2**20)
    gpu = Gauge("yolostream_process_gpu_memory_bytes", "", ["worker", "stream"], registry=r)
    gpu.labels("decoders", "cam2,cam3").set(585 * 2**20)
    restarts = Counter("yolostream_worker_restarts_total", "", ["worker", "stream"], registry=r)
    restarts.labels("source", "cam1").inc(2)
    restarts.labels("decoders", "cam2,cam3").inc(1)
    Gauge("yolostream_uptime_seconds", "", registry=r).set(3725)
    Counter("yolostream_publish_overflows_total", "", registry=r).inc(7)
    Gauge("yolostream_subscriptions", "", registry=r).set(2)
    return generate_latest(r).decode()


def test_parse_and_render_the_status_table() -> None:
    before = parse(_exposition(100, [0.02] * 10), at=10.0)
    now = parse(_exposition(150, [0.02] * 10 + [0.07] * 40), at=12.0)
    assert now.streams["cam1"].decoded == 153 and now.streams["cam1"].published == 150
    assert now.streams["cam1"].dropped == {"inference_behind": 2, "ring_full": 1, "stale_slot": 0}
    assert now.streams["cam1"].state == "running" and now.streams["cam1"].decoder == "nvdec"
    assert now.values["publish_overflows_total"] == 7
    text = render("http://h:1", now, {"ready": True, "streams": {"cam1": "running"}}, before)
    lines = text.splitlines()
    assert lines[0] == "yolostream at http://h:1: ready; up 1h02m; 2 subscription(s); 7 publish overflow(s)"
    row = next(line for line in lines if line.startswith("cam1"))
    # 50 frames in 2 s; the interval's latencies all lie in (0.05, 0.1]: p50 = 0.075, p95 = 0.0975.
    assert row.split() == ["cam1", "running", "nvdec", "153", "150", "3", "25.0", "75", "ms", "98", "ms", "0"]
    assert "over the last 2.0 s" in text
    assert "  cam1: inference_behind 2, ring_full 1" in lines
    assert re.search(r"^supervisor +70 MiB +- +-$", text, re.M)
    assert re.search(r"^source +cam1 +99 MiB +- +2$", text, re.M)  # GPU memory: '-' where none is known
    # A decoder group: one row for its process (host and GPU memory), its streams comma-separated.
    assert re.search(r"^decoders +cam2,cam3 +380 MiB +585 MiB +1$", text, re.M)
    assert re.search(r"^WORKER +STREAM +RSS +GPU +RESTARTS$", text, re.M)
    # Without a first scrape: totals since the start, no frames per second.
    text = render("http://h:1", now, {"ready": False, "reason": "no stream is running"})
    assert "not ready (no stream is running)" in text and "since the start" in text
    assert next(line for line in text.splitlines() if line.startswith("cam1")).split()[6] == "-"


def test_the_status_shows_zones_and_lines() -> None:
    r = CollectorRegistry()
    Counter("yolostream_frames_published_total", "", ["stream"], registry=r).labels("gate").inc(9)
    events = Counter("yolostream_zone_events_total", "", ["stream", "zone", "event"], registry=r)
    events.labels("gate", "yard", "enter").inc(5)
    events.labels("gate", "yard", "exit").inc(2)
    inside = Gauge("yolostream_zone_occupancy", "", ["stream", "zone", "class"], registry=r)
    inside.labels("gate", "yard", "person").set(2)
    inside.labels("gate", "yard", "car").set(1)
    inside.labels("gate", "yard", "truck").set(0)
    crossings = Counter("yolostream_line_crossings_total", "", ["stream", "line", "direction"], registry=r)
    crossings.labels("gate", "door", "in").inc(4)
    crossings.labels("gate", "door", "out")
    now = parse(generate_latest(r).decode(), at=1.0)
    assert now.zones[("gate", "yard")].entered == 5 and now.lines[("gate", "door")] == {"in": 4, "out": 0}
    text = render("http://h:1", now, {"ready": True, "streams": {"gate": "running"}})
    assert re.search(r"^ZONE +STREAM +ENTERED +EXITED +INSIDE +BY CLASS$", text, re.M)
    assert re.search(r"^yard +gate +5 +2 +3 +car 1, person 2$", text, re.M)
    assert re.search(r"^LINE +STREAM +IN +OUT$", text, re.M)
    assert re.search(r"^door +gate +4 +0$", text, re.M)
    # Without zones or lines, no such tables.
    assert "ZONE" not in render("http://h:1", parse(_exposition(1, [0.1])), {"ready": True})


def test_status_says_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(StatusError, match=rf"nothing answers at http://127.0.0.1:{port}/metrics"):
        fetch(f"http://127.0.0.1:{port}/metrics", timeout=2)
    out = subprocess.run(
        [sys.executable, "-m", "streamer", "status", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1 and "nothing answers at" in out.stderr and "metrics.listen" in out.stderr


def test_metrics_config_section() -> None:
    base = "model: {onnx: m.onnx}\nsources: [{id: a, url: a.mp4}]\n"
    assert parse_config(base).metrics.address == ("127.0.0.1", 9464)  # on, this host only, by default
    assert parse_config(base + "metrics:\n").metrics.address == ("127.0.0.1", 9464)
    assert parse_config(base + "metrics: {enabled: false}\n").metrics.address is None
    assert parse_config(base + "metrics: {listen: null}\n").metrics.address is None
    assert parse_config(base + "metrics: {listen: '[::1]:9000'}\n").metrics.address == ("::1", 9000)
    with pytest.raises(ConfigError, match=r"<config>:4: metrics.listen: must be HOST:PORT .* got '9464'"):
        parse_config(base + "metrics:\n  listen: '9464'\n")
    assert url_of_listen("0.0.0.0:9464") == "http://127.0.0.1:9464"
    assert url_of_listen("[::]:9464") == "http://[::1]:9464"


# --- health decisions ----------------------------------------------------------------------------------


def _running(now: float, wall: float, status_age: float = 0.5, **kw: object) -> Snapshot:
    status = RunStatus(time=wall - status_age, streams={"a": StreamStatus("running")})
    fields: dict[str, object] = dict(
        made=now, phase="running", inference="ready", inference_ready_at=now - 60, status=status,
        streams={"a": "running", "b": "down"},
    )  # fmt: skip
    fields.update(kw)
    return Snapshot(**fields)  # type: ignore[arg-type]


def test_health_and_readiness_decisions() -> None:
    now, wall = 1000.0, 1.7e9
    assert health(_running(now, wall), now, wall) == (True, "ok")
    assert readiness(_running(now, wall)) == (True, "ok")
    ok, reason = health(_running(now, wall, status_age=STATUS_STALE_S + 2), now, wall)
    assert not ok and "no status for 7 s: it is stuck" in reason
    ok, reason = health(_running(now - 30, wall), now, wall)
    assert not ok and "supervisor's loop has not run for 30 s" in reason
    # While the model loads the daemon is alive (healthy) but not ready.
    loading = _running(now, wall, status=None, inference="loading")
    assert health(loading, now, wall)[0] and readiness(loading) == (False, "inference worker: loading")
    assert health(_running(now, wall, phase="starting", status=None), now, wall)[0]
    restarting = _running(now, wall, status_age=20, inference="restarting")
    assert not health(restarting, now, wall)[0] and not readiness(restarting)[0]
    # Just (re)started: its first status may not be written yet.
    assert health(_running(now, wall, status_age=20, inference_ready_at=now - 1), now, wall)[0]
    none_running = _running(now, wall, streams={"a": "reconnecting", "b": "down"})
    assert readiness(none_running) == (False, "no stream is running")
    assert readiness(_running(now, wall, phase="stopping")) == (False, "stopping")


def test_the_server_answers_metrics_health_and_readiness(tmp_path: Path) -> None:
    snap = _running(time.monotonic(), time.time(), workers=(WorkerView("supervisor", "", os.getpid(), 0),))
    current = [snap]
    server = MetricsServer("127.0.0.1", 0, tmp_path, lambda: current[0])
    try:
        url = server.url
        code, text = fetch(f"{url}/metrics")
        assert code == 200
        assert (
            'yolostream_stream_up{stream="a"} 1.0' in text and 'yolostream_stream_up{stream="b"} 0.0' in text
        )
        assert 'yolostream_stream_state{state="down",stream="b"} 1.0' in text
        assert re.search(
            r'^yolostream_process_resident_memory_bytes\{stream="",worker="supervisor"\} \d', text, re.M
        )
        code, body = fetch(f"{url}/healthz")
        assert (code, json.loads(body)) == (200, {"healthy": True, "reason": "ok"})
        code, body = fetch(f"{url}/readyz")
        assert code == 200 and json.loads(body)["streams"] == {"a": "running", "b": "down"}
        current[0] = _running(time.monotonic(), time.time(), streams={"a": "down"}, status_age=30)
        code, body = fetch(f"{url}/healthz")
        assert code == 503 and "stuck" in json.loads(body)["reason"]
        code, body = fetch(f"{url}/readyz")
        assert code == 503 and json.loads(body) == {
            "ready": False, "reason": "no stream is running", "inference": "ready", "streams": {"a": "down"}
        }  # fmt: skip
        assert fetch(f"{url}/nope")[0] == 404
        with pytest.raises(OSError):  # the port is taken
            MetricsServer("127.0.0.1", server.address[1], tmp_path, lambda: snap)
    finally:
        server.close()


def test_a_cpu_install_never_imports_cuda_or_torch_for_metrics() -> None:
    code = (
        "import sys; import streamer.daemon.supervisor; "
        "from streamer.observability.metrics import gpu_memory; "
        "assert gpu_memory() is None; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('cuda', 'tensorrt'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- real daemons --------------------------------------------------------------------------------------


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    spots = [(float(rng.uniform(100, 540)), float(rng.uniform(100, 380))) for _ in range(25)]
    return bright_spot_clip(tmp_path / "a.mp4", (640, 480), spots, radius=10)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_scrape(url: str, daemon: Daemon, done: Callable[[Samples], bool], timeout: float = 60) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        _, samples = _scrape(url)
        if done(samples):
            return samples
        assert daemon.proc.poll() is None and time.monotonic() < deadline, daemon.log()[-3000:]
        time.sleep(0.2)


def _state(samples: Samples, stream: str) -> str | None:
    """The state `yolostream_stream_state` gives `stream` (the label whose value is 1), if any."""
    return next(
        (
            dict(labels)["state"]
            for (name, labels), v in samples.items()
            if name == "yolostream_stream_state" and dict(labels)["stream"] == stream and v == 1
        ),
        None,
    )


def test_metrics_health_and_status_of_a_running_daemon(tmp_path: Path, clip: Path) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx")
    camera = f"rtsp://viewer:s3cret-pw@127.0.0.1:{_closed_port()}/stream1"  # nothing listens: reconnects
    config = (
        f"model:\n  onnx: {model}\n"
        "sources:\n"
        "  - id: files\n    url: a.mp4\n    loop: true\n    realtime: true\n"
        f"  - id: cam\n    url: {camera}\n"
        "    reconnect: {initial_s: 0.2, max_s: 0.4, down_after: 2, down_retry_s: 0.4}\n"
        "publish:\n  endpoint: '{endpoint}'\n"
        "metrics:\n  listen: 127.0.0.1:0\n"
    )
    daemon = start_daemon(tmp_path, config)
    try:
        url = _metrics_url(daemon)
        p = "yolostream_"
        samples = _wait_scrape(
            url, daemon,
            lambda s: _value(s, p + "frames_published_total", stream="files") >= 10
            and _value(s, p + "reconnects_total", stream="cam") >= 2
            and _value(s, p + "stream_up", stream="files") == 1  # (as of the last status: within 2 s)
            and _state(s, "cam") in ("reconnecting", "down"),  # (the same status: it lags reconnects_total)
        )  # fmt: skip
        text, samples = _scrape(url)
        # Streams are named by id, never by URL (which carries the camera's password).
        for secret in ("s3cret", "viewer", "rtsp:", "a.mp4", str(tmp_path)):
            assert secret not in text
        streams = {dict(labels)["stream"] for _, labels in samples if "stream" in dict(labels)}
        assert streams <= {"files", "cam", ""}
        decoded = _value(samples, p + "frames_decoded_total", stream="files")
        published = _value(samples, p + "frames_published_total", stream="files")
        assert decoded >= published >= 10
        assert _value(samples, p + "decode_seconds_count", stream="files") >= published
        assert _value(samples, p + "frame_latency_seconds_count", stream="files") >= published - 4
        for name in ("preprocess_seconds", "postprocess_seconds", "publish_seconds"):
            assert _value(samples, p + name + "_count") >= published - 4, name
        assert _value(samples, p + "infer_seconds_count") > 0
        assert (
            _value(samples, p + "batch_size_count") > 0 and _value(samples, p + "batch_size_sum") >= published
        )
        reasons = {dict(labels)["reason"] for name, labels in samples if name == p + "frames_dropped_total"}
        assert reasons <= {"inference_behind", "ring_full", "stale_slot", "notify_full", "inference_restart"}
        assert _value(samples, p + "stream_up", stream="files") == 1
        assert _value(samples, p + "stream_up", stream="cam") == 0
        assert _state(samples, "cam") in ("reconnecting", "down")
        for worker, stream in (("supervisor", ""), ("inference", ""), ("source", "files"), ("source", "cam")):
            rss = _value(samples, p + "process_resident_memory_bytes", worker=worker, stream=stream)
            assert 10 * 2**20 < rss < 2**32, (worker, stream)
        assert _value(samples, p + "worker_restarts_total", worker="source", stream="files") == 0
        assert "yolostream_gpu_memory_used_bytes" not in text  # a CPU engine
        assert _value(samples, p + "inference_ready") == 1
        assert _value(samples, p + "stream_decoder", stream="files", decoder="cpu") == 1

        code, body = fetch(f"{url}/healthz")
        assert (code, json.loads(body)["healthy"]) == (200, True)
        code, body = fetch(f"{url}/readyz")
        ready = json.loads(body)
        assert code == 200 and ready["ready"] and ready["streams"]["files"] == "running"
        assert ready["streams"]["cam"] in ("reconnecting", "down")

        out = subprocess.run(
            [sys.executable, "-m", "streamer", "status", "--url", url, "--interval", "0.5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"yolostream at {url}: ready; up ")
        files_row = r"^files +running +cpu +\d+ +\d+ +\d+ +\d+\.\d +\d+ ms"
        assert re.search(files_row, out.stdout, re.M), out.stdout
        assert re.search(r"^cam +(reconnecting|down) +- +0 +0 +0 +0\.0 +- +- +\d+$", out.stdout, re.M), (
            out.stdout
        )
        assert re.search(r"^source +files +\d+ MiB +- +0$", out.stdout, re.M), out.stdout

        # A worker killed: its counters stay in the totals (multiprocess files of a dead pid), a restart
        # is counted, and counting goes on in the new worker.
        daemon.receive_until(lambda ms: bool(daemon.events("files", "started")))
        pid = int(daemon.events("files", "started")[0].detail["pid"])
        _, before = _scrape(url)
        os.kill(pid, signal.SIGKILL)
        decoded = _value(before, p + "frames_decoded_total", stream="files")
        after = _wait_scrape(
            url, daemon,
            lambda s: _value(s, p + "worker_restarts_total", worker="source", stream="files") == 1
            and _value(s, p + "frames_decoded_total", stream="files") >= decoded + 10,
        )  # fmt: skip
        assert _value(after, p + "frames_published_total", stream="files") >= published
        assert daemon.stop() == 0, daemon.log()
        with pytest.raises(StatusError):  # the endpoint closed with the daemon
            fetch(f"{url}/healthz", timeout=2)
    finally:
        daemon.close()


def test_a_subscriber_that_stops_reading_is_counted_and_never_slows_the_daemon(
    tmp_path: Path, clip: Path
) -> None:
    """A subscriber that never reads, with a small queue, and ~20 kB messages (a long class name): it
    overflows within a second; the daemon keeps publishing and a reading subscriber misses nothing.

    (ZeroMQ drops the stuck subscriber's later messages without telling the publisher, until it reads
    again: the counter counts a subscriber falling behind, not each message it misses.)"""
    model = write_oracle_model(tmp_path / "oracle.onnx", num_classes=1)
    config = (
        f"model:\n  onnx: {model}\n  class_names: ['{'x' * 20000}']\n"
        "sources:\n  - id: cam1\n    url: a.mp4\n    loop: true\n    realtime: true\n"
        "publish:\n  endpoint: '{endpoint}'\n  send_hwm: 5\n"
        "metrics:\n  listen: 127.0.0.1:0\n"
    )
    daemon = start_daemon(tmp_path, config)
    ctx = zmq.Context.instance()
    stuck = ctx.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 1)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.setsockopt(zmq.LINGER, 0)
    stuck.setsockopt(zmq.SUBSCRIBE, b"")
    stuck.connect(f"ipc://{tmp_path}/daemon.pub")
    try:
        url = _metrics_url(daemon)
        p = "yolostream_"
        _wait_scrape(url, daemon, lambda s: _value(s, p + "subscriptions") >= 3)  # (the reader has 2)
        samples = _wait_scrape(
            url, daemon, lambda s: _value(s, p + "publish_overflows_total") > 0, timeout=30
        )
        published = _value(samples, p + "frames_published_total", stream="cam1")
        # ...and the daemon goes on publishing at the stream's rate (25 fps) while the subscriber stays stuck.
        start = time.monotonic()
        later = _wait_scrape(
            url, daemon, lambda s: _value(s, p + "frames_published_total", stream="cam1") >= published + 25
        )
        assert time.monotonic() - start < 5
        assert _value(later, p + "subscriptions") >= 3  # still connected, still not reading
        # The subscriber that reads has missed nothing.
        n = len(daemon.detections("cam1"))
        daemon.receive_until(lambda ms: len(daemon.detections("cam1")) >= n + 25, timeout=30)
        assert daemon.sub.gaps.get("cam1", 0) == 0
        assert daemon.stop() == 0, daemon.log()
    finally:
        stuck.close()
        daemon.close()


def test_a_port_in_use_is_an_error_in_the_log_and_the_daemon_runs_without_metrics(
    tmp_path: Path, clip: Path
) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = (
            f"model:\n  onnx: {model}\nsources:\n  - id: cam1\n    url: a.mp4\n"
            f"publish:\n  endpoint: '{{endpoint}}'\nmetrics:\n  listen: 127.0.0.1:{port}\n"
        )
        daemon = start_daemon(tmp_path, config)
        try:
            daemon.until_ended({"cam1"})
            assert len(daemon.detections("cam1")) == 25
            assert daemon.wait() == 0, daemon.log()
            assert re.search(
                rf"ERROR .*metrics: cannot listen on 127.0.0.1:{port} \(metrics.listen\): Address already in "
                "use; running without metrics",
                daemon.log(),
            ), daemon.log()
        finally:
            daemon.close()


def test_the_decoder_of_a_stream_follows_its_events() -> None:
    from streamer.messages import StreamEvent
    from streamer.observability.status import decoder_after

    started = StreamEvent("cam", "started", "", detail={"codec": "h264", "decoder": "nvdec"})
    fallback = StreamEvent("cam", "fallback", "", detail={"from": "nvdec", "to": "cpu"})
    up = StreamEvent("cam", "up", "", detail={"downtime_s": 3.0})
    decoder = ""
    seen = []
    for event in (started, up, fallback, up):
        decoder = decoder_after(event, decoder)
        seen.append(decoder)
    assert seen == ["nvdec", "nvdec", "cpu", "cpu"]
