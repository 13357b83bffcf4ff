"""Issue #12 items 2-4 with real daemons: no frame lost without a word, state kept across an inference
restart, stuck workers found by their heartbeat and restarted.

Each test runs `yolostream run` as a subprocess with a real subscriber, and sends real signals to its
workers (SIGKILL, SIGSTOP/SIGCONT). Waits have generous caps; nothing asserts a tight duration.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from streamer.cli.status import fetch
from streamer.observability.status import read_status
from streamer.output.protocol import DetectionsMessage
from tests.support.daemon import Daemon, run_dirs, start_daemon
from tests.support.media import bright_spot_clip
from tests.support.models import write_oracle_model

FRAMES = 150


@pytest.fixture
def model(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    spots = [(float(rng.uniform(60, 260)), float(rng.uniform(60, 180))) for _ in range(FRAMES)]
    bright_spot_clip(tmp_path / "a.mp4", (320, 240), spots, radius=8)
    return write_oracle_model(tmp_path / "oracle.onnx", input_size=(320, 320))


def _config(model: Path, streams: str, extra: str = "") -> str:
    return (
        f"model:\n  onnx: {model}\nsources:\n{streams}publish:\n  endpoint: {{endpoint}}\n"
        f"logging:\n  stats_interval_s: 0\n{extra}"
    )


def _inference_pid(daemon: Daemon, nth: int = 0) -> int:
    pids = re.findall(r"inference worker (?:ready|restarted) \(pid (\d+)\)", daemon.log())
    return int(pids[nth])


def _wait_for(what: str, check: Callable[[], bool], daemon: Daemon, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        alive = daemon.proc.poll() is None
        assert alive and time.monotonic() < deadline, f"no {what}:\n{daemon.log()[-4000:]}"
        time.sleep(0.1)


def _unaccounted(daemon: Daemon, stream: str, frames: int) -> list[int]:
    """Frame indices below `frames` neither received nor inside a reported drop or a gap in ``seq``."""
    covered = {m.frame for m in daemon.detections(stream)}
    for event in daemon.events(stream, "dropped"):
        covered.update(range(int(event.detail["first"]), int(event.detail["last"]) + 1))
    last_seq, last_frame, gap = -1, -1, False
    for msg in (m for m in daemon.messages if m.stream == stream):
        gap = gap or msg.seq != last_seq + 1
        last_seq = msg.seq
        if isinstance(msg, DetectionsMessage):
            if gap:  # messages were missed between last_frame and this frame
                covered.update(range(last_frame + 1, msg.frame))
            gap, last_frame = False, msg.frame
    return sorted(set(range(frames)) - covered)


def _dropped(daemon: Daemon, stream: str, reason: str | None = None) -> int:
    key = reason or "dropped"
    return sum(int(e.detail.get(key, 0)) for e in daemon.events(stream, "dropped"))


def test_every_frame_is_received_or_reported_across_a_killed_inference_worker(
    tmp_path: Path, model: Path
) -> None:
    # A file that is not paced waits for inference: it is always ahead, its ring full of announced frames.
    daemon = start_daemon(tmp_path, _config(model, "  - id: a\n    url: a.mp4\n"))
    try:
        daemon.receive_until(lambda ms: len(daemon.detections("a")) >= 20)
        os.kill(_inference_pid(daemon), signal.SIGKILL)
        daemon.until_ended({"a"}, timeout=120)
        assert daemon.wait(60) == 0, daemon.log()
    finally:
        daemon.close()
    (eos,) = daemon.events("a", "eos")
    assert eos.detail["frames"] == FRAMES
    seqs = [m.seq for m in daemon.messages if m.stream == "a"]
    assert seqs == sorted(set(seqs)), "seq went back or repeated across the restart"
    assert _unaccounted(daemon, "a", FRAMES) == []
    mine = [(m.seq, m.frame if isinstance(m, DetectionsMessage) else m.event) for m in daemon.messages]
    jumps = [(a, b) for a, b in itertools.pairwise(mine) if b[0] != a[0] + 1]
    assert _dropped(daemon, "a", "inference_restart") > 0, jumps  # the dead worker's queued frames


def test_frames_a_paced_file_drops_while_inference_is_stopped_are_reported(
    tmp_path: Path, model: Path
) -> None:
    daemon = start_daemon(tmp_path, _config(model, "  - id: a\n    url: a.mp4\n    realtime: true\n"))
    try:
        daemon.receive_until(lambda ms: len(daemon.detections("a")) >= 10)
        pid = _inference_pid(daemon)
        os.kill(pid, signal.SIGSTOP)  # for 3 s (25 fps): the ring fills, then frames are dropped
        time.sleep(3)
        os.kill(pid, signal.SIGCONT)
        daemon.until_ended({"a"}, timeout=120)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    assert _dropped(daemon, "a", "ring_full") > 0
    # Exact: each frame published or counted, never both.
    assert len(daemon.detections("a")) + _dropped(daemon, "a") == FRAMES
    assert _unaccounted(daemon, "a", FRAMES) == []


def test_a_restarted_inference_worker_knows_the_streams_are_running(tmp_path: Path, model: Path) -> None:
    streams = "".join(f"  - id: {s}\n    url: a.mp4\n    loop: true\n    realtime: true\n" for s in "ab")
    daemon = start_daemon(tmp_path, _config(model, streams, "metrics:\n  listen: 127.0.0.1:0\n"))
    try:
        daemon.receive_until(lambda ms: len(daemon.detections("a")) >= 5 and len(daemon.detections("b")) >= 5)
        url = re.search(r"metrics and health checks on (http://\S+) ", daemon.log()).group(1)  # type: ignore[union-attr]
        _wait_for("/readyz 200", lambda: fetch(f"{url}/readyz")[0] == 200, daemon)
        os.kill(_inference_pid(daemon), signal.SIGKILL)
        _wait_for("a restart", lambda: "inference worker restarted" in daemon.log(), daemon)
        # The streams' started events went to the dead worker; no new one comes: the state carries over.
        seen = time.time()
        _wait_for("the new worker's status, streams running", lambda: _running(daemon, "ab", seen), daemon)
        _wait_for("/readyz 200 and stream_up 1", lambda: _ready(url, "ab"), daemon)
        status = subprocess.run(
            [sys.executable, "-m", "streamer", "status", "--url", url],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stdout + status.stderr
        rows = {
            line.split()[0]: line.split()[1]
            for line in status.stdout.splitlines()
            if line[:2] in ("a ", "b ")
        }
        assert rows == {"a": "running", "b": "running"}, status.stdout
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()


def _running(daemon: Daemon, streams: str, since: float) -> bool:
    """The inference worker's status file, written after `since` (Unix time) by a worker that has batched
    frames, has each of `streams` running."""
    (run_dir,) = run_dirs(daemon.pid)
    status = read_status(run_dir / "status.json")
    if status is None or status.time <= since or status.batches == 0:
        return False
    return all(s in status.streams and status.streams[s].state == "running" for s in streams)


def _new_frames(daemon: Daemon, streams: str, n: int) -> None:
    """Forget the messages received so far and receive `n` more detections of each of `streams`."""
    daemon.messages.clear()
    daemon.receive_until(lambda ms: all(len(daemon.detections(s)) >= n for s in streams), timeout=60)


def _ready(url: str, streams: str) -> bool:
    """/readyz answers 200 and /metrics has ``stream_up`` 1 for each of `streams`."""
    code, _ = fetch(f"{url}/readyz")
    metrics = fetch(f"{url}/metrics")[1]
    return code == 200 and all(f'yolostream_stream_up{{stream="{s}"}} 1.0' in metrics for s in streams)


def test_a_stuck_inference_worker_is_killed_and_the_streams_come_back_ready(
    tmp_path: Path, model: Path
) -> None:
    streams = "".join(f"  - id: {s}\n    url: a.mp4\n    loop: true\n    realtime: true\n" for s in "ab")
    extra = "supervisor:\n  heartbeat_timeout_s: 3\nmetrics:\n  listen: 127.0.0.1:0\n"
    daemon = start_daemon(tmp_path, _config(model, streams, extra))
    try:
        daemon.receive_until(lambda ms: len(daemon.detections("a")) >= 5 and len(daemon.detections("b")) >= 5)
        url = re.search(r"metrics and health checks on (http://\S+) ", daemon.log()).group(1)  # type: ignore[union-attr]
        _wait_for("/readyz 200", lambda: fetch(f"{url}/readyz")[0] == 200, daemon)
        pid = _inference_pid(daemon)
        os.kill(pid, signal.SIGSTOP)
        daemon.receive_until(
            lambda ms: bool(daemon.events("a", "stalled")) and bool(daemon.events("b", "stalled")), timeout=90
        )
        log = daemon.log()
        assert f"the inference worker (pid {pid}) has not advanced for" in log
        assert "(no stack: the process is stopped, by SIGSTOP or a debugger)" in log
        assert daemon.events("a", "stalled")[0].detail["pid"] == pid
        seqs = [m.seq for m in daemon.messages if m.stream == "a"]
        seen = time.time()
        _wait_for("the new worker's status, streams running", lambda: _running(daemon, "ab", seen), daemon)
        _wait_for("/readyz 200 and stream_up 1", lambda: _ready(url, "ab"), daemon)
        _new_frames(daemon, "ab", 10)
        later = [m.seq for m in daemon.messages if m.stream == "a"]
        assert later[0] > seqs[-1] and later == sorted(set(later))  # seq went on, never back
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()


def test_a_source_worker_stuck_in_a_call_is_logged_with_its_stack_and_restarted(
    tmp_path: Path, model: Path
) -> None:
    os.mkfifo(tmp_path / "fifo.mp4")  # opening it blocks until a writer comes: none will
    streams = (
        "  - id: stuck\n    url: fifo.mp4\n  - id: fine\n    url: a.mp4\n    loop: true\n    realtime: true\n"
    )
    extra = "supervisor:\n  heartbeat_timeout_s: 3\n"
    daemon = start_daemon(tmp_path, _config(model, streams, extra))
    try:
        daemon.receive_until(lambda ms: bool(daemon.events("stuck", "stalled")), timeout=90)
        (stalled, *_) = daemon.events("stuck", "stalled")
        assert "the source worker had not advanced for" in stalled.message
        log = daemon.log()
        assert f"stream stuck: the source worker (pid {stalled.detail['pid']}) has not advanced for" in log
        assert "Its Python stack:" in log and "in open" in log  # faulthandler's dump, naming the call
        daemon.receive_until(lambda ms: bool(daemon.events("stuck", "error")), timeout=30)
        assert "restarting it" in daemon.events("stuck", "error")[0].message
        assert not daemon.events("fine", "stalled")
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
