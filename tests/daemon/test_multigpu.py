"""Several inference workers in one daemon (``engine.devices``), on the CPU as CI runs them: two ``cpu``
workers, real processes, real video, real ZeroMQ through the publish forwarder, real signals.

The structure is the one of a multi-GPU host (one worker per device, streams placed and kept there, each
worker restarted on its own); only the engines differ.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from streamer.output.protocol import DetectionsMessage, EventMessage
from tests.support.daemon import Daemon, alive, run_dirs, start_daemon
from tests.support.media import bright_spot_clip
from tests.support.models import write_oracle_model

pytestmark = pytest.mark.slow


def _clip(path: Path, size: tuple[int, int], frames: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    spots = [(float(rng.uniform(0.25, 0.75) * w), float(rng.uniform(0.25, 0.75) * h)) for _ in range(frames)]
    return bright_spot_clip(path, size, spots, radius=max(4, w // 40))


def _config(model: Path, sources: dict[str, str], extra: str = "") -> str:
    """`sources`: stream id → the extra lines of its entry (url, device, ...), each indented by 4."""
    entries = "".join(f"  - id: {sid}\n{lines}" for sid, lines in sources.items())
    return (
        f"model:\n  onnx: {model}\nengine:\n  devices: [cpu, cpu]\n  max_batch: 4\n  threads: 1\n"
        f"sources:\n{entries}publish:\n  endpoint: {{endpoint}}\n"
        f"logging:\n  stats_interval_s: 0\nmetrics:\n  listen: 127.0.0.1:0\n{extra}"
    )


def _wait_log(daemon: Daemon, pattern: str, timeout: float = 60.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while (m := re.search(pattern, daemon.log())) is None:
        assert time.monotonic() < deadline and daemon.proc.poll() is None, (pattern, daemon.log()[-4000:])
        time.sleep(0.1)
    return m


def _placed(daemon: Daemon, sid: str) -> str:
    return _wait_log(daemon, rf"stream {sid} → inference worker (\w+)").group(1)


def _dets(daemon: Daemon, sid: str) -> list[DetectionsMessage]:
    return daemon.detections(sid)


def _lost_only_to_load(daemon: Daemon, sid: str) -> None:
    """Every message of `sid` arrived (seq), and every frame index missing among its detections is in a
    ``dropped`` event for a reason of a busy machine (a paced source's full ring, a live frame replaced
    by a newer one), none for an inference worker's restart."""
    msgs = [m for m in daemon.messages if m.stream == sid]
    assert [m.seq for m in msgs] == list(range(len(msgs))), f"{sid}: a message was lost"
    frames = [d.frame for d in _dets(daemon, sid)]
    reported = set()
    for event in daemon.events(sid, "dropped"):
        assert not {"inference_restart", "stale_slot"} & set(event.detail), (sid, event)
        reported |= set(range(int(event.detail["first"]), int(event.detail["last"]) + 1))
    missing = set(range(frames[0], frames[-1])) - set(frames)
    assert missing <= reported, f"{sid}: frames {sorted(missing - reported)} lost without a report"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_oracle_model(tmp_path / "oracle.onnx", input_size=(160, 160))


def test_two_cpu_workers_publish_every_frame_of_four_streams_exactly_once_in_order(
    tmp_path: Path, model: Path
) -> None:
    """Two streams pinned (sources[].device), two placed by count; every frame once, in order, eos last."""
    frames = {"a": 30, "b": 24, "c": 36, "d": 20}
    for i, (sid, n) in enumerate(frames.items()):
        _clip(tmp_path / f"{sid}.mp4", (160, 128), n, seed=i)
    pins = {"a": "    device: cpu1\n", "b": "    device: cpu1\n", "c": "", "d": ""}
    sources = {sid: f"    url: {sid}.mp4\n{pins[sid]}" for sid in frames}
    daemon = start_daemon(tmp_path, _config(model, sources))
    try:
        daemon.until_ended(set(frames))
        assert daemon.wait(30) == 0, daemon.log()
    finally:
        daemon.close()
    # a, b pinned to cpu1; then c and d to the worker with fewer streams: cpu0 (0 vs 2), cpu0 (1 vs 2).
    assert {sid: _placed(daemon, sid) for sid in frames} == {
        "a": "cpu1",
        "b": "cpu1",
        "c": "cpu0",
        "d": "cpu0",
    }
    assert "least loaded (loads: cpu0 1, cpu1 2)" in daemon.log()  # d's placement, by stream count
    for sid, n in frames.items():
        msgs = [m for m in daemon.messages if m.stream == sid]
        assert [m.seq for m in msgs] == list(range(len(msgs))), f"{sid}: gaps or duplicates in seq"
        assert isinstance(msgs[0], EventMessage) and msgs[0].event == "started"
        assert isinstance(msgs[-1], EventMessage) and msgs[-1].event == "eos"
        dets = [m for m in msgs if isinstance(m, DetectionsMessage)]
        assert [d.frame for d in dets] == list(range(n)), sid
        assert all(len(d.detections) == 1 for d in dets), sid
    assert "2 inference workers: cpu0 (cpu), cpu1 (cpu)" in daemon.log()
    assert not run_dirs(daemon.pid)


def test_a_killed_worker_restarts_alone_then_its_streams_move_when_its_budget_is_spent(
    tmp_path: Path, model: Path
) -> None:
    """SIGKILL cpu0's worker: it restarts and cpu1's streams lose no frame; `yolostream status` shows the
    placement; killed again past supervisor.max_restarts, its streams move to cpu1 (a ``moved`` event)
    and go on numbering where they were."""
    for i, sid in enumerate("abcd"):
        _clip(tmp_path / f"{sid}.mp4", (160, 128), 50, seed=i)
    sources = {
        sid: f"    url: {sid}.mp4\n    loop: true\n    realtime: true\n    device: {dev}\n"
        for sid, dev in zip("abcd", ("cpu0", "cpu0", "cpu1", "cpu1"), strict=True)
    }
    extra = "supervisor:\n  max_restarts: 1\n  restart_window_s: 300\n  restart_initial_s: 0.2\n"
    daemon = start_daemon(tmp_path, _config(model, sources, extra))
    try:
        daemon.receive_until(lambda ms: all(len(_dets(daemon, s)) >= 5 for s in "abcd"))
        pid = int(_wait_log(daemon, r"inference worker cpu0 ready \(pid (\d+)\)").group(1))
        other = int(_wait_log(daemon, r"inference worker cpu1 ready \(pid (\d+)\)").group(1))
        url = _wait_log(daemon, r"metrics and health checks on (http://\S+) ").group(1)
        status = subprocess.run(
            [sys.executable, "-m", "streamer", "status", "--url", url, "--interval", "0"],
            capture_output=True, text=True, timeout=60, env={**os.environ},
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        rows = {line.split()[0]: line.split() for line in status.stdout.splitlines() if line.strip()}
        assert "DEVICE" in rows["STREAM"]
        assert [rows[s][-1] for s in "abcd"] == ["cpu0", "cpu0", "cpu1", "cpu1"], status.stdout
        assert "inference:cpu0" in rows and "inference:cpu1" in rows, status.stdout
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        assert "yolostream_forwarder_subscriptions 2.0" in metrics  # (det. and evt. of our subscriber)
        assert 'yolostream_stream_device{device="cpu1",stream="c"} 1.0' in metrics

        os.kill(pid, signal.SIGKILL)
        _wait_log(daemon, r"inference worker cpu0 restarted \(pid \d+\)")
        before = {s: len(_dets(daemon, s)) for s in "abcd"}
        daemon.receive_until(lambda ms: all(len(_dets(daemon, s)) >= before[s] + 5 for s in "abcd"))
        until = time.monotonic() + 1.5  # drops are reported once a second: let the last reports come
        daemon.receive_until(lambda ms: time.monotonic() > until)
        assert alive(other), "the other worker was touched"
        for sid in "cd":  # cpu1's streams: not a message lost, no frame lost to cpu0's restart
            _lost_only_to_load(daemon, sid)
            assert not daemon.events(sid, "error"), sid
        for sid in "ab":  # cpu0's streams go on, their seq never back (the frames in flight: dropped)
            seqs = [m.seq for m in daemon.messages if m.stream == sid]
            assert seqs == sorted(set(seqs)), sid

        second = int(_wait_log(daemon, r"inference worker cpu0 restarted \(pid (\d+)\)").group(1))
        os.kill(second, signal.SIGKILL)
        daemon.receive_until(lambda ms: all(daemon.events(s, "moved") for s in "ab"), timeout=60)
        moved = daemon.events("a", "moved")[0]
        assert moved.detail == {"from": "cpu0", "to": "cpu1"}
        before = {s: len(_dets(daemon, s)) for s in "abcd"}
        daemon.receive_until(lambda ms: all(len(_dets(daemon, s)) >= before[s] + 5 for s in "abcd"))
        for sid in "ab":
            seqs = [m.seq for m in daemon.messages if m.stream == sid]
            assert seqs == sorted(set(seqs)), f"{sid}: seq went back after the move"
        for sid in "cd":
            seqs = [m.seq for m in daemon.messages if m.stream == sid]
            assert seqs == list(range(len(seqs))), sid
        assert "giving up on it; its 2 stream(s) move to the other workers" in daemon.log()
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    assert not run_dirs(daemon.pid)


def test_sighup_places_an_added_stream_on_the_worker_with_fewer_pixels_per_second(
    tmp_path: Path, model: Path
) -> None:
    """cpu0 carries one 320×240 stream, cpu1 two 96×64 ones: by stream count the new one would go to
    cpu0; by measured pixel rate it goes to cpu1."""
    _clip(tmp_path / "big.mp4", (320, 240), 50, seed=1)
    _clip(tmp_path / "small.mp4", (96, 64), 50, seed=2)
    entry = "    url: {}.mp4\n    loop: true\n    realtime: true\n"
    sources = {
        "big": entry.format("big") + "    device: cpu0\n",
        "s1": entry.format("small") + "    device: cpu1\n",
        "s2": entry.format("small") + "    device: cpu1\n",
    }
    daemon = start_daemon(tmp_path, _config(model, sources))
    config = tmp_path / "daemon.yaml"
    try:
        # The load meter measures over 5 s of status files: wait for more than that of published frames.
        daemon.receive_until(lambda ms: all(len(_dets(daemon, s)) >= 200 for s in ("big", "s1", "s2")), 120)
        text = config.read_text()
        config.write_text(text.replace("publish:", f"  - id: new\n{entry.format('big')}publish:"))
        daemon.proc.send_signal(signal.SIGHUP)
        assert _placed(daemon, "new") == "cpu1", daemon.log()
        line = _wait_log(daemon, r"stream new → inference worker cpu1: least loaded \(loads: [^)]*\)").group(
            0
        )
        loads = [float(x) for x in re.findall(r"([\d.]+) Mpx/s", line)]  # (320×240×25 = 1.9 Mpx/s)
        assert len(loads) == 2 and loads[0] > 3 * loads[1], line
        daemon.receive_until(lambda ms: len(_dets(daemon, "new")) >= 5, timeout=60)
        assert len(daemon.events("big", "started")) == 1  # the running streams were not touched
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
