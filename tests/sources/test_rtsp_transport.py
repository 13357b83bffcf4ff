"""``transport: auto`` against real RTSP servers started by the test (#12 item 5): VLC, which refuses RTP
over TCP (``461 Unsupported transport``), and GStreamer's, which takes either.

Before ``auto``, the default ``tcp`` never connected to VLC and said only "cannot open: Protocol not
supported", retried for ever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.errors import SourceError
from streamer.sources.cpu import PyAvSource
from streamer.sources.rtsp import attempts, ffmpeg_options, refused_tcp
from tests.support.media import bright_spot_frames, write_clip
from tests.support.rtsp import RtspServer, require_rtsp_server
from tests.support.vlc import VlcRtspServer, require_vlc

SIZE = (160, 120)
FPS = 25


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 40 s: VLC ends its clients' sessions when it loops the file, so no test here reaches the end.
    spots = [(40.0 + (i % 80), 60.0) for i in range(40 * FPS)]
    path = tmp_path_factory.mktemp("transport") / "spot.ts"
    return write_clip(path, bright_spot_frames(SIZE, spots, radius=8), fps=FPS, gop=FPS)


@pytest.fixture
def vlc(clip: Path, tmp_path: Path) -> Iterator[VlcRtspServer]:
    require_vlc()
    with VlcRtspServer(clip, tmp_path / "vlc.log") as server:
        yield server


def _first_frames(source: PyAvSource, count: int = 10) -> list[int]:
    indices = []
    try:
        for frame in source.frames():
            assert frame.image.shape == (SIZE[1], SIZE[0], 3)
            indices.append(frame.index)
            if len(indices) == count:
                break
    finally:
        source.close()
    return indices


def test_auto_is_the_default_and_takes_udp_when_vlc_refuses_tcp(
    vlc: VlcRtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    source = PyAvSource("cam1", vlc.url, live=True, open_timeout_s=10, read_timeout_s=5)
    assert source.transport == "auto"
    with caplog.at_level(logging.INFO, logger="streamer.sources.cpu"):
        assert _first_frames(source) == list(range(10))
    assert source.chosen_transport == "udp"
    lines = [r.getMessage() for r in caplog.records if "transport auto" in r.getMessage()]
    assert lines == [
        "stream cam1: transport auto: RTP over udp (the server refuses RTP over TCP "
        "(RTSP 461 Unsupported transport, 'Protocol not supported'))"
    ]


def test_tcp_against_a_server_that_refuses_it_says_so_and_what_to_set(vlc: VlcRtspServer) -> None:
    source = PyAvSource("cam1", vlc.url, live=True, transport="tcp", open_timeout_s=10)
    with pytest.raises(SourceError) as info:
        source.open()
    message = str(info.value)
    assert "'cam1'" in message and "refuses RTP over TCP" in message and "461" in message
    assert "transport: udp" in message


def test_udp_works_against_vlc(vlc: VlcRtspServer) -> None:
    source = PyAvSource("cam1", vlc.url, live=True, transport="udp", open_timeout_s=10)
    assert _first_frames(source) == list(range(10))
    assert source.chosen_transport == "udp"


def test_auto_takes_tcp_when_the_server_accepts_it(
    clip: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_rtsp_server()
    with RtspServer({"/cam": clip}, tmp_path / "rtsp.log") as server:
        source = PyAvSource("cam1", server.url("/cam"), live=True, open_timeout_s=10, read_timeout_s=5)
        with caplog.at_level(logging.INFO, logger="streamer.sources.cpu"):
            assert _first_frames(source) == list(range(10))
            assert _first_frames(source) == list(range(10))  # a second connection: no second log line
    assert source.chosen_transport == "tcp"
    lines = [r.getMessage() for r in caplog.records if "transport auto" in r.getMessage()]
    assert lines == ["stream cam1: transport auto: RTP over tcp (the server accepts it)"]


def test_the_transport_setting_becomes_attempts_and_ffmpeg_options() -> None:
    assert attempts("auto") == ("tcp", "udp")
    assert attempts("tcp") == ("tcp",) and attempts("udp") == ("udp",)
    with pytest.raises(ValueError, match="auto, tcp, udp"):
        attempts("http")
    assert ffmpeg_options("tcp") == {"rtsp_transport": "tcp"}
    # UDP: packets that do not come from the server's announced address and port are dropped.
    assert ffmpeg_options("udp") == {"rtsp_transport": "udp", "rtsp_flags": "filter_src"}


def test_what_counts_as_a_refusal_of_tcp() -> None:
    import av

    assert refused_tcp(av.error.OSError(93, "Protocol not supported"))  # what FFmpeg raises after a 461
    assert refused_tcp(RuntimeError("method SETUP failed: 461 Unsupported transport"))
    assert not refused_tcp(av.error.OSError(111, "Connection refused"))
    assert not refused_tcp(av.error.InvalidDataError(1094995529, "Invalid data found"))


def _udp_sockets_of_this_process() -> list[tuple[str, str, int]]:
    """(local, remote, state) of this process's UDP sockets, from /proc (state 1: connected)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])

    def address(field: str) -> str:
        ip, port = field.split(":")
        return f"{'.'.join(str(int(ip[i : i + 2], 16)) for i in (6, 4, 2, 0))}:{int(port, 16)}"

    rows = Path("/proc/net/udp").read_text().splitlines()[1:]
    return [
        (address(f[1]), address(f[2]), int(f[3], 16)) for f in (row.split() for row in rows) if f[9] in inodes
    ]


@pytest.mark.parametrize("server_kind", ["vlc", "gstreamer"])
def test_udp_sockets_take_only_the_cameras_packets_on_its_interface(
    clip: Path, tmp_path: Path, server_kind: str
) -> None:
    """FFmpeg cannot bind RTP/RTCP sockets to an address, but with ``filter_src`` it connects them to the
    server: on loopback they are bound to 127.0.0.1, not 0.0.0.0, and accept packets from the server only."""
    if server_kind == "vlc":
        require_vlc()
        server: VlcRtspServer | RtspServer = VlcRtspServer(clip, tmp_path / "vlc.log")
        url = server.url  # type: ignore[union-attr]
    else:
        require_rtsp_server()
        server = RtspServer({"/cam": clip}, tmp_path / "rtsp.log")
        url = f"rtsp://127.0.0.1:{server.port}/cam"
    before = set(_udp_sockets_of_this_process())
    with server:
        source = PyAvSource("cam1", url, live=True, transport="udp", open_timeout_s=10, read_timeout_s=5)
        try:
            next(iter(source.frames()))
            sockets = [s for s in _udp_sockets_of_this_process() if s not in before]
        finally:
            source.close()
    assert len(sockets) == 2, sockets  # RTP and RTCP of the one video track
    for local, remote, state in sockets:
        assert local.startswith("127.0.0.1:") and remote.startswith("127.0.0.1:"), sockets
        assert not remote.endswith(":0") and state == 1, sockets  # connected to the server's port
