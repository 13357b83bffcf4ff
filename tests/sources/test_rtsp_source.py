"""The PyAV source against a real RTSP server (GStreamer's, started by the test): TCP and UDP, and what
happens when the server dies, stops sending, or never answers. These measure the timeouts that the
source worker's reconnect logic relies on (see `streamer.sources.cpu.PyAvSource`)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.errors import SourceError, SourceFormatError
from streamer.sources.cpu import PyAvSource
from tests.support.media import bright_spot_frames, write_clip
from tests.support.rtsp import RtspServer, free_port, require_rtsp_server

SIZE = (320, 240)
FPS = 20


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_rtsp_server()
    spots = [(40.0 + 6 * i, 120.0) for i in range(40)]
    path = tmp_path_factory.mktemp("rtsp") / "spot.ts"
    return write_clip(path, bright_spot_frames(SIZE, spots, radius=10), fps=FPS, gop=FPS // 2)


@pytest.fixture
def server(clip: Path, tmp_path: Path) -> Iterator[RtspServer]:
    with RtspServer({"/cam": clip}, tmp_path / "rtsp.log") as srv:
        yield srv


def _source(url: str, **options: object) -> PyAvSource:
    return PyAvSource("cam1", url, live=True, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_frames_arrive_over_either_transport(server: RtspServer, transport: str) -> None:
    source = _source(server.url("/cam"), transport=transport, open_timeout_s=5, read_timeout_s=2)
    try:
        info = source.open()
        assert (info.codec, info.width, info.height) == ("h264", *SIZE)
        frames = []
        for frame in source.frames():
            frames.append(frame)
            if len(frames) == 30:
                break
    finally:
        source.close()
    assert [f.index for f in frames] == list(range(30))
    assert all(f.image.shape == (SIZE[1], SIZE[0], 3) for f in frames)
    pts = [f.pts for f in frames[1:]]  # (the first frame of an RTSP stream has no pts)
    assert all(p is not None for p in pts) and pts == sorted(pts)  # type: ignore[type-var]


def test_a_killed_server_ends_the_stream_at_once_with_a_retryable_error(server: RtspServer) -> None:
    source = _source(server.url("/cam"), open_timeout_s=5, read_timeout_s=4)
    try:
        frames = source.frames()
        for _ in range(5):
            next(frames)
        server.kill()
        killed = time.monotonic()
        with pytest.raises(SourceError, match="the stream ended") as info:
            for _ in frames:  # the frames already buffered, then the end
                pass
        # The kernel resets the connection: FFmpeg sees the end of the stream, not a timeout.
        assert time.monotonic() - killed < 1.0
        assert not isinstance(info.value, SourceFormatError)
    finally:
        source.close()


def test_a_server_that_stops_sending_is_detected_within_read_timeout(server: RtspServer) -> None:
    read_timeout = 2.0
    source = _source(server.url("/cam"), open_timeout_s=5, read_timeout_s=read_timeout)
    try:
        frames = source.frames()
        for frame in frames:  # past the burst buffered while the stream was probed: frames now come live
            if frame.pts is not None and frame.pts >= 2.0:
                break
        server.pause()
        paused = time.monotonic()
        with pytest.raises(SourceError, match="no data for 2 s") as info:
            for _ in frames:
                pass
        waited = time.monotonic() - paused
        # FFmpeg is armed with half the timeout: its first interrupt releases the frame the RTP
        # depacketiser held back, the second fails (measured). Either way, within read_timeout_s.
        assert read_timeout / 2 - 0.2 <= waited <= read_timeout + 0.5, waited
        assert not isinstance(info.value, SourceFormatError)
        closing = time.monotonic()
        source.close()  # sends a TEARDOWN to the frozen server: must not wait for an answer
        assert time.monotonic() - closing < 1.0
    finally:
        source.close()
        server.resume()


def test_a_server_that_accepts_and_never_answers_fails_the_open_after_open_timeout() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    source = _source(f"rtsp://127.0.0.1:{port}/cam", open_timeout_s=1.5, read_timeout_s=1)
    try:
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"no answer from the server in 1\.5 s") as info:
            source.open()
        assert 1.4 <= time.monotonic() - started <= 3.0
        assert not isinstance(info.value, SourceFormatError)  # FFmpeg calls it "invalid data": it is not
    finally:
        source.close()
        thread.join(1)
        for conn in accepted:
            conn.close()
        listener.close()


def test_errors_never_carry_the_password() -> None:
    password = "pa:ss@w/rd-7"  # percent-encoded in the URL, as docs/config.md says
    url = f"rtsp://viewer:{password.replace(':', '%3A').replace('@', '%40').replace('/', '%2F')}@127.0.0.1:{free_port()}/cam"  # noqa: E501
    source = _source(url, open_timeout_s=2)
    with pytest.raises(SourceError) as info:
        source.open()
    error = info.value
    text = str(error)
    assert "Connection refused" in text and "cam1" in text
    for secret in (password, "pa%3Ass%40w%2Frd-7", "ss@w"):
        assert secret not in text
    # FFmpeg's own exception carries the URL: it must not hide in the chain either.
    assert error.__cause__ is None and error.__suppress_context__
    assert error.args and all(password not in str(arg) for arg in error.args)
