"""The supervisor with real processes and signals: restarts, SIGHUP reload, the systemd notify protocol."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from streamer.daemon.restart import RestartPolicy, RestartTracker
from tests.support.daemon import alive, run_dirs, start_daemon
from tests.support.media import bright_spot_clip
from tests.support.models import write_oracle_model

REPO = Path(__file__).resolve().parents[2]


def _spot_clip(path: Path) -> Path:
    rng = np.random.default_rng(0)
    spots = [(float(rng.uniform(100, 540)), float(rng.uniform(100, 380))) for _ in range(25)]
    return bright_spot_clip(path, (640, 480), spots, radius=10)


def _config(model: Path, streams: list[str], extra: str = "") -> str:
    sources = "".join(
        f"  - id: {sid}\n    url: a.mp4\n    loop: true\n    realtime: true\n" for sid in streams
    )
    return (
        f"model:\n  onnx: {model}\nsources:\n{sources}publish:\n  endpoint: {{endpoint}}\n"
        f"logging:\n  stats_interval_s: 1\n{extra}"
    )


def _count(daemon, stream: str) -> int:  # type: ignore[no-untyped-def]
    return len(daemon.detections(stream))


# --- the restart policy --------------------------------------------------------------------------------


def test_restart_backoff_doubles_is_capped_and_gives_up() -> None:
    now = [0.0]
    tracker = RestartTracker(
        RestartPolicy(initial_s=0.5, max_s=4, max_restarts=4, window_s=60), lambda: now[0]
    )
    delays = []
    for _ in range(4):
        now[0] += 1
        delays.append(tracker.crashed())
        tracker.started()
    assert delays == [0.5, 1.0, 2.0, 4.0]
    now[0] += 1
    assert tracker.crashed() is None  # a fifth crash within the window: give up


def test_restart_backoff_resets_after_a_healthy_run_and_the_window_slides() -> None:
    now = [0.0]
    tracker = RestartTracker(
        RestartPolicy(initial_s=1, max_s=10, max_restarts=2, window_s=30), lambda: now[0]
    )
    assert tracker.crashed() == 1
    tracker.started()
    assert tracker.crashed() == 2
    tracker.started()
    now[0] += 31  # ran healthy for longer than max_s, and the old restarts left the window
    assert tracker.crashed() == 1


# --- real daemons --------------------------------------------------------------------------------------


@pytest.fixture
def model(tmp_path: Path) -> Path:
    _spot_clip(tmp_path / "a.mp4")
    return write_oracle_model(tmp_path / "oracle.onnx")


def test_a_killed_source_worker_is_restarted_after_its_backoff(tmp_path: Path, model: Path) -> None:
    daemon = start_daemon(tmp_path, _config(model, ["victim", "other"]))
    try:
        daemon.receive_until(lambda ms: len(daemon.events("victim", "started")) == 1)
        pid = int(daemon.events("victim", "started")[0].detail["pid"])
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        daemon.receive_until(lambda ms: len(daemon.events("victim", "started")) == 2, timeout=60)
        # The supervisor's own delay is exact (0.5 s, asserted below from its message); the wall time adds
        # spawning a Python worker and opening the file: ~1.2 s idle, 2.15–6.1 s measured under two busy
        # loops on a 2-core machine, so it is logged, not asserted (#12: no wall-clock bound in tests).
        print(f"restarted {time.monotonic() - killed:.2f} s after SIGKILL")
        assert "killed by SIGKILL; restarting it in 0.5 s" in daemon.events("victim", "error")[0].message
        before = (_count(daemon, "victim"), _count(daemon, "other"))
        daemon.receive_until(
            lambda ms: _count(daemon, "victim") >= before[0] + 5 and _count(daemon, "other") >= before[1] + 5
        )
        other = [d.seq for d in daemon.messages if d.stream == "other"]
        assert other == list(range(len(other)))  # the other stream never missed a message
        rings = {p.name for d in run_dirs(daemon.pid) for p in d.glob("victim.*.ring")}
        assert all(f".{pid}." not in name for name in rings), "the dead worker's ring was not removed"
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    assert not run_dirs(daemon.pid)


def test_a_killed_inference_worker_is_restarted_and_the_sources_resume(tmp_path: Path, model: Path) -> None:
    daemon = start_daemon(tmp_path, _config(model, ["a", "b"]))
    try:
        daemon.receive_until(lambda ms: _count(daemon, "a") >= 3 and _count(daemon, "b") >= 3)
        pid = int(re.search(r"inference worker ready \(pid (\d+)\)", daemon.log()).group(1))  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        # The publisher comes back on the same endpoint; the subscriber reconnects by itself.
        deadline = time.monotonic() + 30
        while "inference worker restarted" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        daemon.messages.clear()
        daemon.receive_until(lambda ms: _count(daemon, "a") >= 5 and _count(daemon, "b") >= 5, timeout=30)
        assert not alive(pid)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()


def test_sighup_adds_and_removes_streams_and_rejects_an_invalid_config(tmp_path: Path, model: Path) -> None:
    daemon = start_daemon(tmp_path, _config(model, ["keep", "gone"]))
    config = tmp_path / "daemon.yaml"
    try:
        daemon.receive_until(lambda ms: _count(daemon, "keep") >= 3 and _count(daemon, "gone") >= 3)
        keep_pid = int(daemon.events("keep", "started")[0].detail["pid"])
        text = config.read_text()
        config.write_text(text.replace("  - id: gone\n", "  - id: new\n"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.receive_until(lambda ms: _count(daemon, "new") >= 3, timeout=30)
        n_gone = _count(daemon, "gone")
        time.sleep(1.0)
        daemon.receive_until(lambda ms: _count(daemon, "keep") >= 10)
        assert _count(daemon, "gone") <= n_gone + 2  # (frames already decoded may still come out)
        assert len(daemon.events("keep", "started")) == 1 and alive(keep_pid)  # untouched

        config.write_text(text.replace("confidence", "x") + "detection:\n  confidence: 7\n")
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "keeping the running config" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        assert "detection.confidence" in daemon.log()
        before = _count(daemon, "keep")
        daemon.receive_until(lambda ms: _count(daemon, "keep") >= before + 5)  # still running

        # An alias bomb (10 levels of 10) as the new file: refused like any invalid file, never wedging.
        bomb = "x-bomb:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
        )
        config.write_text(text + bomb)
        daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "expands to more than 100,000 values" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        before = _count(daemon, "keep")
        daemon.receive_until(lambda ms: _count(daemon, "keep") >= before + 5)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()


def test_the_systemd_notify_protocol(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    received: list[str] = []

    def wait_for(field: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(re.search(field, m) for m in received):
            assert time.monotonic() < deadline, (field, received, daemon.log())
            with contextlib.suppress(TimeoutError):
                received.append(server.recv(4096).decode())

    daemon = start_daemon(tmp_path, _config(model, ["a"]))
    try:
        wait_for("READY=1")
        ready = next(i for i, m in enumerate(received) if "READY=1" in m)
        assert any("EXTEND_TIMEOUT_USEC=30000000" in m for m in received[:ready])  # while the model loaded
        wait_for(r"STATUS=1 stream\(s\): 1 running; [1-9]\d* frames published")
        received.clear()
        wait_for("WATCHDOG=1")  # while frames are being published
        received.clear()
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for("RELOADING=1")
        assert "MONOTONIC_USEC=" in next(m for m in received if "RELOADING=1" in m)
        wait_for("READY=1")
        daemon.proc.send_signal(signal.SIGTERM)
        wait_for("STOPPING=1")
        assert daemon.wait(30) == 0
    finally:
        daemon.close()
        server.close()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", ["yolostream.service", "yolostream@.service", "yolostream-mps.service"])
def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path, unit: str) -> None:
    # verify checks that ExecStart's binary exists: point it at this environment's yolostream (and, for
    # the MPS unit, at a binary that exists where NVIDIA's driver is not installed).
    exe = Path(sys.executable).with_name("yolostream")
    text = (REPO / "systemd" / unit).read_text().replace("/usr/local/bin/yolostream", str(exe))
    text = text.replace("/usr/bin/nvidia-cuda-mps-control", shutil.which("true") or "/bin/true")
    target = tmp_path / unit
    target.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(target)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in result.stderr.splitlines() if unit.split("@")[0] in line or "yolostream" in line
    ]
    assert result.returncode == 0 and not problems, result.stderr


def test_a_worker_over_its_memory_budget_is_recycled(tmp_path: Path, model: Path) -> None:
    # A budget no source worker can meet: it is recycled between frames once it has run 10 s.
    daemon = start_daemon(tmp_path, _config(model, ["a"], "supervisor:\n  source_rss_limit_mb: 1\n"))
    try:
        daemon.receive_until(lambda ms: len(daemon.events("a", "started")) >= 2, timeout=60)
        first, second = (int(e.detail["pid"]) for e in daemon.events("a", "started")[:2])
        assert first != second and not alive(first)
        assert "source worker uses" in daemon.log() and "recycling it" in daemon.log()
        before = _count(daemon, "a")
        daemon.receive_until(lambda ms: _count(daemon, "a") >= before + 5)
        assert not daemon.events("a", "error"), "a recycle is not a failure"
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()


def test_json_logs_are_one_object_per_line(tmp_path: Path, model: Path) -> None:
    import json

    daemon = start_daemon(tmp_path, _config(model, ["a"]).replace("logging:\n", "logging:\n  format: json\n"))
    try:
        daemon.receive_until(lambda ms: _count(daemon, "a") >= 3)
        assert daemon.stop() == 0
    finally:
        daemon.close()
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert {"ts", "level", "process", "logger", "message"} <= set(records[0])
    assert any(r["process"] == "inference" for r in records)
    assert any(r["message"] == "yolostream stopped" for r in records)
