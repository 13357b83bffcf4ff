"""Live RTSP streams through the real daemon: a real RTSP server (GStreamer's, from Debian's packages)
started, killed and restarted by the test; real ZeroMQ; the oracle model.

Skipped with the reason where ``/usr/bin/python3`` cannot import GStreamer's RTSP server (CI installs it).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.config import ReconnectConfig
from streamer.output.protocol import DetectionsMessage, EventMessage
from streamer.sources.reconnect import BackoffPolicy
from tests.support.daemon import Daemon, start_daemon
from tests.support.media import bright_spot_frames, write_clip
from tests.support.models import write_oracle_model
from tests.support.rtsp import RtspServer, free_port, require_rtsp_server

pytestmark = pytest.mark.slow

SIZE = (320, 240)
RECONNECT = ReconnectConfig(
    initial_s=0.5, max_s=1.0, multiplier=2, jitter=0.2, down_after=2, down_retry_s=1.0
)
OPEN_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_rtsp_server()
    folder = tmp_path_factory.mktemp("media")
    moving = [(40.0 + 6 * i, 60.0 + 3 * i) for i in range(40)]
    return {
        "model": write_oracle_model(folder / "oracle.onnx", input_size=(320, 320)),
        "moving": write_clip(
            folder / "moving.ts", bright_spot_frames(SIZE, moving, radius=10), fps=20, gop=10
        ),
        "still": write_clip(
            folder / "still.ts", bright_spot_frames(SIZE, [(160.0, 120.0)] * 20, 10), fps=20, gop=10
        ),
        "replay": write_clip(folder / "replay.mp4", bright_spot_frames(SIZE, moving[:20], radius=10), fps=10),
    }


@pytest.fixture
def server(media: dict[str, Path], tmp_path: Path) -> Iterator[RtspServer]:
    with RtspServer({"/moving": media["moving"], "/still": media["still"]}, tmp_path / "rtsp.log") as srv:
        yield srv


def _config(model: Path, sources: str) -> str:
    reconnect = "".join(f"\n      {key}: {value}" for key, value in RECONNECT.model_dump().items())
    sources = sources.replace("{reconnect}", f"reconnect:{reconnect}\n    open_timeout_s: {OPEN_TIMEOUT_S}")
    return (
        f"model:\n  onnx: {model}\nengine:\n  max_batch: 2\nsources:\n{sources}"
        "publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 1\n"
    )


def _events(daemon: Daemon, stream: str) -> list[str]:
    return [e.event for e in daemon.events(stream)]


def _wait_until(daemon: Daemon, moment: float) -> None:
    """Keep receiving (so nothing is missed) until the monotonic clock reaches `moment`."""
    daemon.receive_until(lambda _: time.monotonic() >= moment, timeout=moment - time.monotonic() + 30)


def test_a_camera_that_goes_away_comes_back_and_a_file_stream_loses_nothing(
    media: dict[str, Path], server: RtspServer, tmp_path: Path
) -> None:
    sources = (
        f"  - id: cam\n    url: {server.url('/moving')}\n    read_timeout_s: 2\n    {{reconnect}}\n"
        f"  - id: replay\n    url: {media['replay']}\n    loop: true\n    realtime: true\n"
    )
    daemon = start_daemon(tmp_path, _config(media["model"], sources))
    try:
        daemon.receive_until(
            lambda _: len(daemon.detections("cam")) >= 10 and len(daemon.detections("replay")) >= 5
        )
        server.kill()
        killed = time.monotonic()
        daemon.receive_until(lambda _: "down" in _events(daemon, "cam"), timeout=15)
        assert time.monotonic() - killed < 5, "down_after 2 must mark it down well before the server is back"
        _wait_until(daemon, killed + 5.0)  # the camera is away for 5 s
        server.restart()
        restarted_wall = time.time()
        daemon.receive_until(lambda _: "up" in _events(daemon, "cam"), timeout=30)
        up = daemon.events("cam", "up")[0]
        frames_before = len(daemon.detections("cam"))
        daemon.receive_until(lambda _: len(daemon.detections("cam")) >= frames_before + 10)
        replay_frames = len(daemon.detections("replay"))
        daemon.receive_until(lambda _: len(daemon.detections("replay")) >= replay_frames + 5)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()

    # The camera: reconnecting (backing off), down once, then up within the backoff bound of the restart.
    kinds = _events(daemon, "cam")
    assert kinds[0] == "started" and kinds.count("down") == 1 and kinds.count("up") == 1, kinds
    assert kinds.index("reconnecting") < kinds.index("down") < kinds.index("up"), kinds
    retries = daemon.events("cam", "reconnecting")
    assert str(retries[0].detail["reason"]).startswith("the stream ended"), retries[0]  # connections reset
    policy = BackoffPolicy.from_config(RECONNECT)
    for retry in retries:
        lo, hi = policy.delay_range(int(retry.detail["attempt"]))
        assert lo <= float(retry.detail["delay_s"]) <= hi
    # Once the server is back, the next attempt comes within the longest delay, and opening it within
    # open_timeout_s: the bound on how long a camera that is back stays unseen.
    bound = policy.longest_delay_s + OPEN_TIMEOUT_S
    assert up.ts - restarted_wall <= bound, (up.ts - restarted_wall, bound)
    assert up.detail["was_down"] == 1 and int(up.detail["attempts"]) == len(retries), (up, retries)
    assert 5.0 <= float(up.detail["downtime_s"]) <= 5.0 + bound, up
    # Its detections resume, with frame indices that keep counting across the reconnect.
    cam = daemon.detections("cam")
    assert [d.frame for d in cam] == sorted({d.frame for d in cam})
    cam_seq = [m.seq for m in daemon.messages if m.stream == "cam"]
    assert cam_seq == list(range(cam_seq[0], cam_seq[0] + len(cam_seq)))  # every event and detection

    # The file stream lost nothing meanwhile: every frame, in order, no gap in seq, nothing dropped.
    replay = [m for m in daemon.messages if m.stream == "replay"]
    replay_events = [(m.event, m.message) for m in replay if isinstance(m, EventMessage)]
    assert replay_events[:1] == [("started", "h264 320x240")] and len(replay_events) == 1, replay_events
    assert [m.seq for m in replay] == list(range(len(replay)))
    frames = [m.frame for m in replay if isinstance(m, DetectionsMessage)]
    missing = sorted(set(range(len(frames))) - set(frames))
    assert frames == list(range(len(frames))), f"frames missing: {missing[:20]}"
    assert len(frames) >= 60  # ~7 s at 10 fps


def test_a_frozen_camera_is_detected_within_frozen_after_s(
    media: dict[str, Path], server: RtspServer, tmp_path: Path
) -> None:
    frozen_after = 2.0
    url = server.url("/still")
    sources = f"  - id: cam\n    url: {url}\n    frozen_after_s: {frozen_after}\n    {{reconnect}}\n"
    daemon = start_daemon(tmp_path, _config(media["model"], sources))
    try:
        daemon.receive_until(lambda _: len(daemon.events("cam", "reconnecting")) >= 2, timeout=40)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    started = daemon.events("cam", "started")[0]
    first, second = daemon.events("cam", "frozen")[:2]
    # The picture never changed: frozen after frozen_after_s of stream time (the frames of the first
    # second arrive at once, buffered while FFmpeg probed the stream: so it may come sooner on the clock).
    assert first.ts - started.ts <= frozen_after + 1.0, first.ts - started.ts
    assert first.detail["frozen_s"] == pytest.approx(frozen_after, abs=0.1)
    assert len(daemon.detections("cam")) > 0
    # Each time it is reconnected; still frozen after reconnecting: no "up", and the backoff grows.
    kinds = _events(daemon, "cam")
    assert "up" not in kinds, kinds
    retries = daemon.events("cam", "reconnecting")
    assert [r.detail["attempt"] for r in retries[:2]] == [1, 2]
    assert retries[0].detail["reason"].startswith("frozen picture")
    assert second.ts > retries[0].ts


def test_camera_passwords_never_show(media: dict[str, Path], tmp_path: Path) -> None:
    password = "Sup3r-s3cret"
    port = free_port()  # nothing listens there
    url = f"rtsp://viewer:{password}@127.0.0.1:{port}/cam"
    daemon = start_daemon(
        tmp_path, _config(media["model"], f"  - id: cam\n    url: {url}\n    {{reconnect}}\n")
    )
    try:
        daemon.receive_until(lambda _: "down" in _events(daemon, "cam"), timeout=20)
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    events = daemon.events("cam")
    assert [e.event for e in events][:2] == ["reconnecting", "down"]  # (down_after: 2)
    assert "Connection refused" in events[0].message
    log = daemon.log()
    assert f"viewer:***@127.0.0.1:{port}" in log
    for text in [log, *(e.message for e in events), *(str(v) for e in events for v in e.detail.values())]:
        assert password not in text
