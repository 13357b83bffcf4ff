"""Frozen-picture detection: signatures of real decoded video, timing in stream time, reconnects."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from streamer.sources.frozen import FrozenDetector, same_picture, signature
from tests.support.media import bright_spot_frames, decode_frames, write_clip


def _picture(seed: int = 0, size: tuple[int, int] = (1280, 720)) -> np.ndarray:
    """A detailed picture (smoothed noise), the kind that makes compression noise visible."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 16, axis=0), 16, axis=1))


def test_the_signature_is_a_16x9_picture_of_cell_means() -> None:
    image = np.zeros((1080, 1920, 3), np.uint8)
    image[:, 960:] = 200  # right half bright
    sig = signature(image)
    assert sig.shape == (9, 16, 3) and sig.dtype == np.uint8
    assert (sig[:, :8] == 0).all() and (sig[:, 8:] == 200).all()
    assert signature(np.zeros((51, 101), np.uint8)).shape == (9, 16)  # odd, small, grey


def test_a_frozen_picture_reencoded_at_every_keyframe_still_counts_as_the_same(tmp_path: Path) -> None:
    # The camera's encoder froze but keeps encoding its last picture: keyframes every 5 frames re-encode
    # it with fresh compression noise. Every decoded frame must match the first.
    for gop in (5, 1):
        clip = write_clip(tmp_path / f"frozen{gop}.mp4", [_picture()] * 12, gop=gop, crf=28)
        frames = decode_frames(clip)
        first = signature(frames[0])
        assert all(same_picture(first, signature(f)) for f in frames), gop
        assert not all((f == frames[0]).all() for f in frames)  # (the pixels did change)


def test_a_small_motion_is_a_new_picture(tmp_path: Path) -> None:
    # A bright disc of radius 12 moving by 20 px in a 640x360 frame: one cell changes by a few levels.
    spots = [(200.0 + 20 * i, 180.0) for i in range(6)]
    frames = decode_frames(
        write_clip(tmp_path / "moving.mp4", bright_spot_frames((640, 360), spots, radius=12))
    )
    sigs = [signature(f) for f in frames]
    assert not any(same_picture(a, b) for a, b in itertools.pairwise(sigs))


def test_reported_after_after_s_of_stream_time_then_again_after_another() -> None:
    detector = FrozenDetector(after_s=1.0)
    image = _picture()
    reports = [(i, detector.update(image, i * 0.1)) for i in range(31)]
    assert [(i, round(held, 6)) for i, held in reports if held is not None] == [
        (10, 1.0),
        (20, 1.0),
        (30, 1.0),
    ]


def test_a_new_picture_starts_the_timing_over() -> None:
    detector = FrozenDetector(after_s=1.0)
    a, b = _picture(0), _picture(1)
    for i in range(4):
        assert detector.update(a, i * 0.25) is None
    assert detector.update(b, 1.0) is None  # changed when a would have been reported
    assert all(detector.update(b, 1.0 + i * 0.25) is None for i in range(1, 4))
    assert detector.update(b, 2.0) == 1.0


def test_frames_without_pts_do_not_advance_the_clock() -> None:
    detector = FrozenDetector(after_s=1.0)
    image = _picture()
    assert detector.update(image, None) is None
    assert all(detector.update(image, None) is None for _ in range(100))
    assert detector.update(image, 5.0) is None  # the first timed frame starts the run
    assert detector.update(image, 6.0) == pytest.approx(1.0)


def test_after_a_reconnect_the_clock_restarts_and_the_frozen_picture_is_remembered() -> None:
    detector = FrozenDetector(after_s=1.0)
    frozen, fresh = _picture(0), _picture(1)
    assert detector.update(frozen, 50.0) is None
    assert detector.update(frozen, 51.0) == pytest.approx(1.0)
    detector.reset(keep_picture=True)
    assert not detector.update(frozen, 0.0)  # the new connection's clock starts at 0: no false report
    assert detector.carried  # ...still the picture from before
    assert detector.update(frozen, 0.5) is None and detector.carried
    assert detector.update(frozen, 1.0) == pytest.approx(1.0)  # frozen again, a full after_s later
    detector.reset(keep_picture=True)
    assert detector.update(fresh, 0.0) is None
    assert not detector.carried  # a new picture: recovered
    detector.reset()
    assert not detector.carried
    detector.update(fresh, 0.0)
    assert not detector.carried  # forgotten: even the same picture starts a new run


def test_after_s_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrozenDetector(0)
