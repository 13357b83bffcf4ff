"""Corrupt input is contained in the sources (`streamer.sources.guard`): real clips, damaged with seeded
corruptions (`tests.support.corrupt`), decoded by the CPU source and passed through NVDEC's Annex B step.

Whatever the damage, a file either plays to its end (the frames that decode, numbered without gaps) or
fails with a `SourceFormatError` naming the stream; a live stream fails with a retryable `SourceError`.
Never another exception: before the guard, PyAV's `IndexError`, `UnicodeDecodeError` and the source's own
`AttributeError` escaped and ended the source worker.
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import pytest

from streamer.errors import SourceError, SourceFormatError
from streamer.sources.cpu import PyAvSource
from streamer.sources.guard import BadInput
from streamer.sources.nvdec import annexb_packets
from tests.support.corrupt import corrupted_clip
from tests.support.media import bright_spot_frames, write_clip

FORMATS = ("ts", "mp4", "mkv", "flv")
CODECS = ("h264", "hevc")
SEEDS = range(12)
FRAMES = 30


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("good")
    frames = bright_spot_frames((128, 96), [(30.0 + 2 * i, 48.0) for i in range(FRAMES)], radius=8)
    return {
        (ext, codec): write_clip(folder / f"{codec}.{ext}", frames, codec=codec, gop=10)
        for ext in FORMATS
        for codec in CODECS
    }


def _play(path: Path, live: bool = False) -> tuple[list[int], SourceError | None]:
    """The indices of the frames the source decodes from `path`, and the SourceError it ended with."""
    source = PyAvSource("cam1", str(path), live=live)
    indices: list[int] = []
    try:
        for frame in source.frames():
            indices.append(frame.index)
    except SourceError as exc:
        return indices, exc
    finally:
        source.close()
    return indices, None


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("ext", FORMATS)
def test_a_damaged_file_plays_to_its_end_or_fails_with_a_format_error(
    clips: dict[tuple[str, str], Path], tmp_path: Path, ext: str, codec: str, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes = []
    for seed in SEEDS:
        bad = corrupted_clip(clips[ext, codec], tmp_path / f"{seed}.{ext}", seed)
        indices, error = _play(bad)  # anything but a SourceError fails the test here
        assert indices == list(range(len(indices))), (seed, indices)
        assert len(indices) <= FRAMES + 2, seed  # (a corrupt header may make up a frame or two, no more)
        if error is not None:
            assert isinstance(error, SourceFormatError) and "'cam1'" in str(error), (seed, error)
            outcomes.append("error")
        else:
            outcomes.append("end")
    assert "end" in outcomes, outcomes  # damage past the first keyframe leaves most files playable


def test_the_mpegts_file_that_raised_index_error_out_of_demux_plays_to_its_end(
    clips: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    """Seed 6 of this clip makes its tables announce new streams mid-file: PyAV 18's demux flush loop then
    indexes streams it never registered (IndexError at the end of the file, and of every replay)."""
    bad = corrupted_clip(clips["ts", "h264"], tmp_path / "bad.ts", seed=6)
    with av.open(str(bad)) as container, pytest.raises(IndexError):  # what PyAV does with it
        for _ in container.demux(container.streams.video[0]):
            pass
    indices, error = _play(bad)
    assert error is None
    assert len(indices) >= FRAMES - 5


@pytest.mark.parametrize(("codec", "seed"), [("h264", 9), ("hevc", 6)])
def test_a_corrupt_mp4_header_is_a_format_error(
    clips: dict[tuple[str, str], Path], tmp_path: Path, codec: str, seed: int
) -> None:
    """These seeds damage the moov atom (at the end of a plain .mp4): PyAV opens a track without a decoder."""
    bad = corrupted_clip(clips["mp4", codec], tmp_path / "bad.mp4", seed)
    with pytest.raises(SourceFormatError, match=r"'cam1'.*(not a readable video|no decoder)"):
        PyAvSource("cam1", str(bad)).open()


def test_a_live_stream_of_bad_data_fails_with_a_retryable_error(
    clips: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    bad = corrupted_clip(clips["mp4", "h264"], tmp_path / "bad.mp4", seed=9)
    _, error = _play(bad, live=True)
    assert error is not None and not isinstance(error, SourceFormatError)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("ext", ["mp4", "mkv", "flv"])  # (MPEG-TS is Annex B already: no filter)
def test_the_nvdec_annexb_step_never_raises_on_damaged_files(
    clips: dict[tuple[str, str], Path], tmp_path: Path, ext: str, codec: str
) -> None:
    """NVDEC's input path (demux → Annex B filter) runs without a GPU: it is contained like the CPU's."""
    for seed in SEEDS:
        bad = corrupted_clip(clips[ext, codec], tmp_path / f"{seed}.{ext}", seed)
        source = PyAvSource("cam1", str(bad))
        try:
            source.open()
        except SourceFormatError:
            continue
        container = source._container
        assert container is not None
        stream = container.streams.video[0]
        guard = BadInput("cam1", str(bad), "annexb", live=False, budget=50)
        try:
            packets = list(annexb_packets(source._packets(container, stream), stream, guard))
        except SourceFormatError:
            continue
        finally:
            source.close()
        assert packets[-1].size == 0 and all(p.size for p in packets[:-1])


def test_bad_input_is_counted_and_logged_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    bad = BadInput(
        "cam1", "rtsp://u:s3cret@cam/x", "undecodable packet", live=False, budget=1000,
        interval_s=10.0, clock=lambda: now[0],
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="streamer.sources.guard"):
        for i in range(600):  # 600 failures over 60 s: one warning at once, then one per 10 s
            now[0] = i * 0.1
            bad.failed(ValueError("bad bytes from rtsp://u:s3cret@cam/x"))
            if i % 7 == 0:
                bad.ok()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 6, lines
    assert bad.total == 600
    assert (
        lines[0]
        == "stream cam1: undecodable packet (1 so far): ValueError: bad bytes from rtsp://u:***@cam/x"
    )
    assert "(101 so far, 99 more since the last report)" in lines[1]
    assert all("s3cret" not in line for line in lines)


def test_bad_input_gives_up_after_its_budget_in_a_row() -> None:
    file = BadInput("cam1", "clip.mp4", "undecodable packet", live=False, budget=3)
    file.failed(ValueError("x"))
    file.failed(ValueError("x"))
    file.ok()  # a good packet between: the run starts over
    file.failed(ValueError("x"))
    file.failed(ValueError("x"))
    with pytest.raises(SourceFormatError, match=r"cam1.*3 in a row: undecodable packet: ValueError: x"):
        file.failed(ValueError("x"))
    live = BadInput("cam1", "rtsp://cam/x", "undecodable packet", live=True, budget=1)
    with pytest.raises(SourceError) as info:
        live.failed(av.error.InvalidDataError(1094995529, "Invalid data"))
    assert not isinstance(info.value, SourceFormatError)  # a live stream is retried
    assert info.value.__cause__ is None and info.value.__suppress_context__  # (no URL in the chain)


def test_a_damaged_file_is_logged_without_flooding(
    clips: dict[tuple[str, str], Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file with many bad packets: each counted in `decode_errors`, one warning for them all (they come
    within the 10 s between two warnings), not one warning each."""
    bad = corrupted_clip(clips["mp4", "hevc"], tmp_path / "noisy.mp4", seed=2)  # 10 undecodable packets
    source = PyAvSource("cam1", str(bad))
    with caplog.at_level(logging.WARNING):
        try:
            frames = list(source.frames())
        finally:
            source.close()
    assert frames and source.decode_errors >= 5
    warnings = [r.getMessage() for r in caplog.records if "undecodable packet" in r.getMessage()]
    assert len(warnings) == 1, warnings
