"""The pacer: thinning a pts sequence to an fps limit, and pacing frames against the wall clock."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence

import pytest

from streamer.sources.base import DecodedFrame, Pacer


def _admitted(pacer: Pacer, pts: Sequence[float | None]) -> list[float | None]:
    return [p for p in pts if pacer.admit(p)]


def test_without_a_limit_every_frame_is_admitted() -> None:
    pacer = Pacer(realtime=False, fps_limit=None)
    pts = [i / 25 for i in range(50)]
    assert _admitted(pacer, pts) == pts


def test_a_limit_of_half_the_rate_keeps_every_other_frame() -> None:
    pacer = Pacer(realtime=False, fps_limit=12.5)
    pts = [i / 25 for i in range(50)]  # 2 s at 25 fps
    kept = _admitted(pacer, pts)
    assert kept == pts[::2]


def test_a_limit_that_does_not_divide_the_rate_keeps_the_long_run_rate_exact() -> None:
    pacer = Pacer(realtime=False, fps_limit=10)
    pts = [i / 25 for i in range(250)]  # 10 s at 25 fps
    kept = [p for p in pts if pacer.admit(p)]
    assert len(kept) == 100
    assert all(b - a >= 0.08 - 1e-9 for a, b in itertools.pairwise(kept))


def test_unknown_pts_are_always_admitted() -> None:
    pacer = Pacer(realtime=False, fps_limit=1)
    assert pacer.admit(0.0)
    assert all(pacer.admit(None) for _ in range(10))
    assert not pacer.admit(0.5)
    assert pacer.admit(1.0)


def test_a_gap_restarts_the_schedule_from_the_frame_after_it() -> None:
    pacer = Pacer(realtime=False, fps_limit=12.5)
    assert _admitted(pacer, [0.0, 0.04, 0.08]) == [0.0, 0.08]
    # 10 s later (a stall of a live stream): keep its first frame and every other one after it.
    later = [10.04 + i / 25 for i in range(6)]
    assert _admitted(pacer, later) == later[::2]


def test_pts_that_jump_backwards_are_not_dropped_until_they_catch_up() -> None:
    pacer = Pacer(realtime=False, fps_limit=12.5)
    before = [100.0 + i / 25 for i in range(10)]
    assert _admitted(pacer, before) == before[::2]
    # The stream's clock restarts (a camera reset): the limit applies from the new origin on.
    after = [i / 25 for i in range(10)]
    assert _admitted(pacer, after) == after[::2]


def test_realtime_pacing_takes_the_duration_of_the_frames() -> None:
    pacer = Pacer(realtime=True, fps_limit=None)
    start = time.monotonic()
    for i in range(10):
        pacer.wait(i / 25)
    assert time.monotonic() - start >= 0.36 - 0.005  # frame 9 is due 0.36 s after frame 0


def test_realtime_pacing_follows_the_pts_origin_of_the_stream() -> None:
    pacer = Pacer(realtime=True, fps_limit=None)
    start = time.monotonic()
    pacer.wait(1000.0)  # the first frame sets the origin: no wait
    assert time.monotonic() - start < 0.2
    pacer.wait(1000.2)
    assert time.monotonic() - start >= 0.2 - 0.005


def test_without_realtime_or_pts_wait_returns_at_once() -> None:
    start = time.monotonic()
    Pacer(realtime=False, fps_limit=None).wait(0.0)
    Pacer(realtime=False, fps_limit=None).wait(50.0)
    paced = Pacer(realtime=True, fps_limit=None)
    paced.wait(0.0)
    paced.wait(None)
    assert time.monotonic() - start < 0.5


def test_wait_returns_promptly_when_stop_is_set() -> None:
    pacer = Pacer(realtime=True, fps_limit=None)
    stop = threading.Event()
    pacer.wait(0.0, stop)
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    start = time.monotonic()
    try:
        pacer.wait(60.0, stop)  # due in a minute
    finally:
        timer.cancel()
    assert 0.05 <= time.monotonic() - start < 2.0

    start = time.monotonic()
    pacer.wait(120.0, stop)  # already set: no sleep at all
    assert time.monotonic() - start < 0.1


def test_decoded_frame_records_its_capture_time() -> None:
    import numpy as np

    before = time.time()
    frame = DecodedFrame(np.zeros((2, 2, 3), np.uint8), index=3, pts=0.12)
    assert before <= frame.capture_time <= time.time()
    assert (frame.index, frame.pts) == (3, pytest.approx(0.12))
