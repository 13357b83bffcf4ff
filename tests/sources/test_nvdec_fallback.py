"""The NVDEC source's CPU-side parts: Annex B packets, decoder choice, and the per-stream fallback.

Everything here runs without a GPU: a codec NVDEC lacks (MPEG-4 Part 2) is refused before any CUDA call,
and on a machine without NVDEC an H.264 stream asked to decode with ``nvdec`` falls back the same way.
The NVDEC decode itself is tested on the GPU host (tests/sources/test_nvdec_source.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import zmq

from streamer.config import SourceConfig
from streamer.messages import EVENT_EOS, EVENT_FALLBACK, EVENT_STARTED, FrameReady, StreamEvent
from streamer.sources import open_source
from streamer.sources.base import DecodedFrame
from streamer.sources.cpu import PyAvSource
from streamer.sources.fallback import FallbackSource
from streamer.sources.nvdec import DecoderUnavailable, NvdecSource, annexb_packets, nvdec_usable
from streamer.transport.notify import NotifyReceiver, NotifySender
from streamer.transport.ring import FrameRing
from streamer.workers.common import StopFlag, WorkerContext
from streamer.workers.ring_writer import RingWriter
from streamer.workers.source import _fell_back, _run
from tests.support.media import decode_frames, write_clip

SIZE = (64, 48)


def _frames(n: int = 10) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    frames = _frames()
    return {
        "h264": write_clip(folder / "h264.mp4", frames, codec="h264"),
        "hevc": write_clip(folder / "hevc.mp4", frames, codec="hevc"),
        "mpeg4": write_clip(folder / "mpeg4.mp4", frames, codec="mpeg4"),
    }


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_annexb_packets_decode_without_extradata(clips: dict[str, Path], codec: str) -> None:
    """What NVDEC's parser gets: Annex B with in-band parameter sets, decodable by a decoder that has
    never seen the container's extradata; pts carried through; one empty packet last."""
    with av.open(str(clips[codec])) as container:
        stream = container.streams.video[0]
        packets = list(annexb_packets(container.demux(stream), stream))
    assert packets[-1].size == 0 and all(p.size for p in packets[:-1])
    assert all(bytes(p).startswith((b"\0\0\0\1", b"\0\0\1")) for p in packets[:-1])  # start codes
    decoder = av.CodecContext.create(codec, "r")
    frames = []
    for p in packets:
        frames.extend(decoder.decode(None if p.size == 0 else av.Packet(bytes(p))))
    assert len(frames) == 10
    for got, expected in zip(frames, decode_frames(clips[codec]), strict=True):
        np.testing.assert_array_equal(got.to_ndarray(format="rgb24"), expected)
    assert sorted(p.pts for p in packets[:-1]) == [i * 512 for i in range(10)]


def test_open_source_picks_the_decoder(clips: dict[str, Path]) -> None:
    url = str(clips["h264"])
    assert isinstance(open_source(SourceConfig(id="a", url=url, decoder="cpu")), PyAvSource)
    nvdec = open_source(SourceConfig(id="a", url=url, decoder="nvdec"))
    assert isinstance(nvdec, FallbackSource) and isinstance(nvdec.current, NvdecSource)
    auto = open_source(SourceConfig(id="a", url=url))
    if nvdec_usable() is None:
        assert isinstance(auto, FallbackSource)
    else:
        assert isinstance(auto, PyAvSource) and not isinstance(auto, NvdecSource)


def test_an_engine_on_the_cpu_keeps_auto_on_the_cpu_decoder(
    clips: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """(On the GPU host too: NVDEC frames would only come back to the host for a CPU engine.)"""
    url = str(clips["h264"])
    with caplog.at_level(logging.DEBUG, logger="streamer.sources"):
        auto = open_source(SourceConfig(id="a", url=url), engine_on_gpu=False)
        nvdec = open_source(SourceConfig(id="b", url=url, decoder="nvdec"), engine_on_gpu=False)
    assert isinstance(auto, PyAvSource) and not isinstance(auto, NvdecSource)
    assert "stream a: decoder auto -> cpu (the engine runs on the CPU)" in caplog.text
    assert isinstance(nvdec, FallbackSource)  # asked for explicitly: kept, with a warning
    assert "stream b: decoder nvdec with an engine on the CPU" in caplog.text


def _opened(cfg: SourceConfig) -> tuple[FallbackSource, list[tuple[Exception, int]]]:
    calls: list[tuple[Exception, int]] = []
    source = open_source(cfg, on_fallback=lambda exc, n: calls.append((exc, n)))
    assert isinstance(source, FallbackSource)
    return source, calls


def test_a_codec_nvdec_lacks_falls_back_at_open(clips: dict[str, Path]) -> None:
    source, calls = _opened(SourceConfig(id="old", url=str(clips["mpeg4"]), decoder="nvdec"))
    try:
        info = source.open()
        assert info.decoder == "cpu" and info.codec == "mpeg4"
        ((exc, produced),) = calls
        assert isinstance(exc, DecoderUnavailable) and "mpeg4" in str(exc) and produced == 0
        frames = list(source.frames())
        assert [f.index for f in frames] == list(range(10))
        assert all(isinstance(f, DecodedFrame) for f in frames)
    finally:
        source.close()


@pytest.mark.skipif(nvdec_usable() is None, reason="NVDEC is usable here: the GPU test covers this stream")
def test_h264_without_nvdec_falls_back_at_open(clips: dict[str, Path]) -> None:
    source, calls = _opened(SourceConfig(id="cam", url=str(clips["h264"]), decoder="nvdec"))
    try:
        assert source.open().decoder == "cpu"
        ((exc, _),) = calls
        assert "cannot create an NVDEC decoder" in str(exc)
        assert len(list(source.frames())) == 10
    finally:
        source.close()


class _GivesUp(PyAvSource):
    """Stands in for an NVDEC source whose hardware fails after `after` frames (no NVDEC here)."""

    def __init__(self, *args: object, after: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.after = after

    def frames(self) -> Iterator[DecodedFrame]:
        for frame in super().frames():
            if frame.index == self.after:
                raise DecoderUnavailable(self.stream_id, "10 packets in a row failed in NVDEC")
            yield frame


@pytest.mark.parametrize("live", [False, True])
def test_a_switch_in_the_middle_neither_repeats_nor_skips(clips: dict[str, Path], live: bool) -> None:
    url = str(clips["h264"])
    calls: list[int] = []
    source = FallbackSource(
        _GivesUp("cam", url, after=4),
        lambda: PyAvSource("cam", url),
        lambda exc, n: calls.append(n),
        live=live,
    )
    source.open()
    try:
        frames = list(source.frames())
    finally:
        source.close()
    assert calls == [4] and source.switched
    expected = decode_frames(clips["h264"])
    if live:  # a camera goes on from the new decoder's first frame, counting on
        assert [f.index for f in frames] == list(range(14))
        np.testing.assert_array_equal(frames[4].image, expected[0])
    else:  # a file is re-read and what was already produced is skipped
        assert [f.index for f in frames] == list(range(10))
        for got, want in zip(frames, expected, strict=True):
            np.testing.assert_array_equal(got.image, want)


def test_the_source_worker_reports_the_fallback_and_runs_on_the_cpu(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    """decoder: nvdec on a stream NVDEC cannot take: a `fallback` event, then the CPU path as usual."""
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/notify.sock"
    receiver, sender = NotifyReceiver(endpoint, ctx), NotifySender(endpoint, ctx)
    writer = RingWriter(str(tmp_path), "old", slots=4)
    stop = StopFlag(WorkerContext(str(tmp_path), "", None, "INFO", threading.Event(), os.getppid()))
    cfg = SourceConfig(id="old", url=str(clips["mpeg4"]), decoder="nvdec")
    events: list[StreamEvent] = []
    frames = 0

    def read() -> None:
        nonlocal frames
        rings: dict[str, FrameRing] = {}
        while (msg := receiver.recv(5.0)) is not None:
            if isinstance(msg, StreamEvent):
                events.append(msg)
                if msg.kind == EVENT_EOS:
                    break
            elif isinstance(msg, FrameReady):
                assert msg.layout == "rgb24"
                ring = rings.setdefault(msg.ring, FrameRing.attach(msg.ring))
                ring.release(msg.slot, msg.seq)
                frames += 1
        for ring in rings.values():
            ring.close()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        source = open_source(cfg, on_fallback=lambda exc, n: _fell_back(cfg, sender, exc, n))
        assert _run(cfg, source, sender, writer, stop) == 0
        source.close()
    finally:
        reader.join(10)
        writer.close()
        sender.close()
        receiver.close()
        ctx.destroy(linger=0)
    assert [e.kind for e in events] == [EVENT_FALLBACK, EVENT_STARTED, EVENT_EOS]
    assert events[0].detail["from"] == "nvdec" and events[0].detail["to"] == "cpu"
    assert "mpeg4" in events[0].message and events[1].detail["decoder"] == "cpu"
    assert frames == 10
