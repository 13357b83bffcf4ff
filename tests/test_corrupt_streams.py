"""Damaged streams through the real daemon, beside a good one (#12 item 1): real encoded clips with seeded
corruptions (`tests.support.corrupt`), real subprocesses, real ZeroMQ, the oracle model; and the same
damaged bytes served live over a real HTTP server.

Each damaged file ends with an ``eos`` or ``error`` event, no source worker crashes (no traceback, no
restart), and the good stream loses nothing. A damaged live stream never ends: it is reconnected, by
the same worker, for as long as the daemon runs.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.corrupt import corrupted_clip
from tests.support.daemon import start_daemon
from tests.support.media import bright_spot_frames, write_clip
from tests.support.models import write_oracle_model

pytestmark = pytest.mark.slow

SIZE = (128, 96)
FRAMES = 30
# Seeds 6 and 9 include the files that crashed the source worker before the guard: MPEG-TS / H.264 seed
# 6 (IndexError out of demux), MP4 / H.264 seed 9 and MP4 / HEVC seed 6 (corrupt moov atom).
SEEDS = (6, 9)
FORMATS = ("ts", "mp4", "mkv", "flv")
CODECS = ("h264", "hevc")


def _frames() -> list:  # type: ignore[type-arg]
    return bright_spot_frames(SIZE, [(30.0 + 2 * i, 48.0) for i in range(FRAMES)], radius=8)


def _config(model: Path, sources: str) -> str:
    return (
        f"model:\n  onnx: {model}\nengine:\n  max_batch: 4\nsources:\n{sources}"
        "publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 0\n"
    )


def _no_crash(log: str) -> None:
    assert "Traceback" not in log, log[-4000:]
    assert "source worker failed" not in log, log[-4000:]
    assert "giving up" not in log, log[-4000:]


def test_damaged_files_beside_a_good_one(tmp_path: Path) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(128, 128))
    write_clip(tmp_path / "good.mp4", _frames(), gop=10)
    damaged = {}
    for ext in FORMATS:
        for codec in CODECS:
            clean = write_clip(tmp_path / f"clean-{codec}.{ext}", _frames(), codec=codec, gop=10)
            for seed in SEEDS:
                sid = f"{ext}-{codec}-{seed}"
                damaged[sid] = corrupted_clip(clean, tmp_path / f"{sid}.{ext}", seed).name
    sources = "".join(
        f"  - id: {sid}\n    url: {name}\n" for sid, name in {"good": "good.mp4", **damaged}.items()
    )
    daemon = start_daemon(tmp_path, _config(model, sources))
    try:
        daemon.until_ended({"good", *damaged}, timeout=120)
        assert daemon.wait(60) == 0, daemon.log()  # every stream ended: the daemon exits by itself
    finally:
        daemon.close()
    _no_crash(daemon.log())
    good = [m.frame for m in daemon.detections("good")]
    assert good == list(range(FRAMES)), "the good stream lost or repeated frames"
    assert daemon.events("good", "eos") and not daemon.events("good", "error")
    for sid in damaged:
        ends = daemon.events(sid, "eos") + daemon.events(sid, "error")
        assert len(ends) == 1, (sid, ends)  # ended once: never restarted to replay the file
        frames = [m.frame for m in daemon.detections(sid)]
        assert frames == list(range(len(frames))), (sid, frames)
        for error in daemon.events(sid, "error"):
            assert sid in error.message, error.message


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving `tmp_path`; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_a_damaged_live_stream_is_retried_for_ever(tmp_path: Path, http_server: str) -> None:
    """The MPEG-TS file that raised IndexError, served live: before, its worker crashed at the end of every
    connection and the supervisor gave the camera up for good after 5 restarts."""
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(128, 128))
    clean = write_clip(tmp_path / "clean.ts", _frames(), gop=10)
    corrupted_clip(clean, tmp_path / "bad.ts", seed=6)
    write_clip(tmp_path / "good.mp4", _frames(), gop=10)
    reconnect = "    reconnect: {initial_s: 0.2, max_s: 0.4, jitter: 0.0}\n"
    sources = (
        f"  - id: cam\n    url: {http_server}/bad.ts\n{reconnect}"
        "  - id: good\n    url: good.mp4\n    loop: true\n    realtime: true\n"
    )
    daemon = start_daemon(tmp_path, _config(model, sources))
    try:
        # More connections than the supervisor's 5 restarts of a crashing worker.
        daemon.receive_until(lambda ms: len(daemon.events("cam", "reconnecting")) >= 8, timeout=120)
        assert daemon.proc.poll() is None, "the daemon must keep running"
        # Each connection plays the file to its end, and the next one works again ("up").
        assert len(daemon.events("cam", "up")) >= 6
        assert not daemon.events("cam", "error") and not daemon.events("cam", "eos")
        assert len(daemon.events("cam", "started")) == 1  # one worker all along, never restarted
        frames = [m.frame for m in daemon.detections("cam")]
        # Indices go on across connections (a live stream may drop frames when inference lags).
        assert frames == sorted(set(frames)) and frames[-1] >= FRAMES
        assert len(daemon.detections("good")) > 0
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    _no_crash(daemon.log())


def test_a_live_stream_whose_header_is_damaged_is_down_and_retried_at_the_slow_rate(
    tmp_path: Path, http_server: str
) -> None:
    """An MP4 whose moov atom is damaged (it raised AttributeError in the source before), served live: every
    connection fails, so the camera is reported down and retried at ``down_retry_s``, by the same worker."""
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(128, 128))
    clean = write_clip(tmp_path / "clean.mp4", _frames(), gop=10)
    corrupted_clip(clean, tmp_path / "bad.mp4", seed=9)
    write_clip(tmp_path / "good.mp4", _frames(), gop=10)
    reconnect = "    reconnect: {initial_s: 0.1, max_s: 0.2, jitter: 0.0, down_after: 3, down_retry_s: 0.5}\n"
    sources = (
        f"  - id: cam\n    url: {http_server}/bad.mp4\n{reconnect}"
        "  - id: good\n    url: good.mp4\n    loop: true\n    realtime: true\n"
    )
    daemon = start_daemon(tmp_path, _config(model, sources))
    try:
        daemon.receive_until(lambda ms: len(daemon.events("cam", "reconnecting")) >= 9, timeout=120)
        assert daemon.proc.poll() is None, "the daemon must keep running"
        down = daemon.events("cam", "down")
        assert len(down) == 1 and "no decoder for the codec" in down[0].message, down
        slow = [m for m in daemon.events("cam", "reconnecting") if m.seq > down[0].seq]
        assert len(slow) >= 6 and all(m.detail["delay_s"] == 0.5 for m in slow), slow
        assert not daemon.events("cam", "error") and not daemon.events("cam", "up")
        assert len(daemon.detections("good")) > 0
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    _no_crash(daemon.log())
