"""The CPU decoder on real clips encoded by PyAV: counts, sizes, indices and timestamps, looping, URLs,
and the errors for missing, corrupt and truncated files."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from streamer.errors import SourceError, SourceFormatError
from streamer.sources.cpu import PyAvSource
from tests.support.media import corrupt_file, decode_frames, decode_timestamps, truncated_clip, write_clip

W, H = 64, 48
COUNT = 12


def _frames(count: int = COUNT, size: tuple[int, int] = (W, H)) -> list[np.ndarray]:
    """Flat frames of distinct grey levels: survive compression, so frame i is recognisable."""
    w, h = size
    return [np.full((h, w, 3), 20 + 15 * i, dtype=np.uint8) for i in range(count)]


def _noise(count: int) -> list[np.ndarray]:
    """Random pictures: every frame is a sizeable packet, so a cut lands inside one."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "h264": write_clip(folder / "h264.mp4", _frames(), codec="h264"),
        "hevc": write_clip(folder / "hevc.mp4", _frames(), codec="hevc"),  # x265 ultrafast has B-frames
        "h264_30fps": write_clip(folder / "h264_30.mkv", _frames(8, (96, 32)), codec="h264", fps=30),
        "faststart": write_clip(folder / "fast.mp4", _noise(40), codec="h264", faststart=True),
    }


def _decode_all(source: PyAvSource) -> list:
    try:
        return list(source.frames())
    finally:
        source.close()


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_decodes_every_frame_with_index_size_and_pts(clips: dict[str, Path], codec: str) -> None:
    path = clips[codec]
    source = PyAvSource("cam1", str(path))
    info = source.open()
    assert (info.codec, info.width, info.height, info.fps, info.decoder) == (codec, W, H, 25.0, "cpu")
    assert source.info == info
    frames = _decode_all(source)

    assert [f.index for f in frames] == list(range(COUNT))
    assert all(f.image.shape == (H, W, 3) and f.image.dtype == np.uint8 for f in frames)
    expected_pts = [float(t) for t in decode_timestamps(path)]
    assert [f.pts for f in frames] == pytest.approx(expected_pts, abs=1e-9)
    assert expected_pts == pytest.approx([i / 25 for i in range(COUNT)])
    # Presentation order, and each frame's pixels are the ones written there (lossy: within a few levels).
    reference = decode_frames(path)
    for frame, ref, level in zip(frames, reference, (20 + 15 * i for i in range(COUNT)), strict=True):
        np.testing.assert_array_equal(frame.image, ref)
        assert abs(float(frame.image.mean()) - level) < 4
    assert source.decode_errors == 0


def test_frames_opens_the_source_itself(clips: dict[str, Path]) -> None:
    source = PyAvSource("cam1", str(clips["h264_30fps"]))
    frames = _decode_all(source)  # no open() first
    assert len(frames) == 8
    assert source.info is not None
    assert (source.info.width, source.info.height) == (96, 32)
    assert source.info.fps == pytest.approx(30.0)
    assert source.info.as_detail() == {
        "codec": "h264",
        "width": 96,
        "height": 32,
        "decoder": "cpu",
        "fps": 30.0,
    }


def test_loop_continues_index_and_pts_across_the_end_of_the_file(clips: dict[str, Path]) -> None:
    source = PyAvSource("cam1", str(clips["h264"]), loop=True)
    try:
        frames = list(itertools.islice(source.frames(), 2 * COUNT + 5))
    finally:
        source.close()
    assert [f.index for f in frames] == list(range(2 * COUNT + 5))
    pts = [f.pts for f in frames if f.pts is not None]
    assert len(pts) == len(frames)
    assert all(b > a for a, b in itertools.pairwise(pts)), pts
    # The next loop starts one frame interval after the last frame: the rate stays 25 fps throughout.
    assert pts == pytest.approx([i / 25 for i in range(2 * COUNT + 5)], abs=1e-6)
    # And the pictures start over (a seek to the start and a flushed decoder: the same pictures exactly).
    for first, again in zip(frames[:COUNT], frames[COUNT : 2 * COUNT], strict=True):
        np.testing.assert_array_equal(again.image, first.image)


def test_a_closed_source_opens_again_from_the_start(clips: dict[str, Path]) -> None:
    source = PyAvSource("cam1", str(clips["h264"]))
    first = next(iter(source.frames()))
    source.close()
    source.close()  # idempotent
    again = _decode_all(source)
    assert [f.index for f in again] == list(range(COUNT))
    np.testing.assert_array_equal(again[0].image, first.image)


def test_a_file_url_works(clips: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "my clips"  # a space: percent-encoded in the URL
    folder.mkdir()
    path = folder / "clip 1.mp4"
    path.write_bytes(clips["h264"].read_bytes())
    for url in (path.as_uri(), f"file://{path}", f"file://localhost{path}"):
        frames = _decode_all(PyAvSource("cam1", url))
        assert len(frames) == COUNT, url


def test_a_missing_file_is_a_format_error_naming_the_stream_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.mp4"
    source = PyAvSource("door-cam", str(path))
    with pytest.raises(SourceFormatError) as err:
        source.open()
    assert err.value.stream == "door-cam"
    assert "'door-cam'" in str(err.value)
    assert str(path) in str(err.value)
    assert "not found" in str(err.value)
    assert isinstance(err.value, SourceError) and isinstance(err.value, ConnectionError)


def test_a_corrupt_file_is_a_format_error(tmp_path: Path) -> None:
    source = PyAvSource("cam1", str(corrupt_file(tmp_path / "noise.mp4")))
    with pytest.raises(SourceFormatError, match=r"cam1.*not a readable video"):
        source.open()


def test_a_file_without_video_is_a_format_error(tmp_path: Path) -> None:
    import av

    path = tmp_path / "audio.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(SourceFormatError, match="no video track"):
        PyAvSource("cam1", str(path)).open()


@pytest.mark.timeout(20)
def test_a_truncated_faststart_mp4_decodes_what_is_there_then_fails(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    cut = truncated_clip(clips["faststart"], tmp_path / "cut.mp4", keep_fraction=0.5)
    source = PyAvSource("cam1", str(cut))
    source.open()
    decoded = []
    with pytest.raises(SourceFormatError, match="cam1"):
        for frame in source.frames():
            decoded.append(frame.index)
    source.close()
    assert 5 <= len(decoded) < 40
    assert decoded == list(range(len(decoded)))


@pytest.mark.timeout(20)
def test_a_truncated_plain_mp4_does_not_open(clips: dict[str, Path], tmp_path: Path) -> None:
    cut = truncated_clip(clips["h264"], tmp_path / "cut.mp4", keep_fraction=0.5)
    with pytest.raises(SourceFormatError):
        PyAvSource("cam1", str(cut)).open()
