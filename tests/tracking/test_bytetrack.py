"""The ByteTrack tracker: unit behaviour, and its quality measured with MOT metrics against a reference.

The quality test scores yolostream's tracker and the reference ByteTrack of Roboflow's `trackers` package
(Apache-2.0; a test-only comparison) on the same noisy detections of synthetic scenes with known truth
(`tests.support.trajectories`), each with its shipped defaults, with `motmetrics` (IDF1, ID switches,
MOTA). Run with ``-s`` to see the table.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from streamer.tracking import ByteTracker, StreamClock, TrackParams
from streamer.tracking.bytetrack import iou_matrix
from tests.support.trajectories import FPS, detect, scene

SEEDS = (1, 2, 3, 4)


def _box(cx: float, cy: float, w: float = 50.0, h: float = 100.0) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _frame(*rows: tuple[float, float, float]) -> np.ndarray:
    """Rows of (cx, cy, score) → ``[K, 6]`` detections of class 0."""
    return np.array([[*_box(cx, cy), s, 0] for cx, cy, s in rows], dtype=np.float64).reshape(-1, 6)


def test_iou_matrix() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 20, 20]], dtype=float)
    b = np.array([[5, 0, 15, 10], [100, 100, 110, 110]], dtype=float)
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150, 0], [100 / 400, 0]])
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)


def test_a_moving_object_gets_one_id_after_min_hits_frames() -> None:
    tracker = ByteTracker(TrackParams(min_hits=3))
    ids = [int(tracker.update(_frame((100 + 5 * i, 200, 0.9)), i / 30, 1000 + i / 30)[0]) for i in range(20)]
    assert ids[:2] == [-1, -1]
    assert set(ids[2:]) == {1}


def test_two_objects_crossing_keep_their_ids() -> None:
    tracker = ByteTracker()
    first = second = None
    for i in range(60):
        a, b = 100 + 8 * i, 580 - 8 * i  # they meet at frame 30
        ids = tracker.update(_frame((a, 200, 0.9), (b, 204, 0.9)), i / 30, i / 30)
        if i == 5:
            first, second = int(ids[0]), int(ids[1])
        if i > 5:
            assert (int(ids[0]), int(ids[1])) == (first, second), f"frame {i}"
    assert first is not None and first > 0 and second is not None and second > 0 and first != second


def test_dropped_frames_do_not_break_a_track() -> None:
    """A live stream loses 10 frames in a row: the object moved on; the time step says how far."""
    tracker = ByteTracker()
    times = [i / 30 for i in range(10)] + [i / 30 for i in range(20, 30)]
    ids = [int(tracker.update(_frame((100 + 12 * 30 * t, 300, 0.9)), t, 5000 + t)[0]) for t in times]
    assert set(ids[1:]) == {1}, ids


def test_a_lost_track_comes_back_within_max_lost_s_and_not_after() -> None:
    tracker = ByteTracker(TrackParams(max_lost_s=0.5))
    for i in range(10):
        tracker.update(_frame((100, 100, 0.9)), i / 30, 0.0)
    for i in range(10, 20):  # 1/3 s unseen
        assert len(tracker.update(_frame(), i / 30, 0.0)) == 0
    assert int(tracker.update(_frame((100, 100, 0.9)), 20 / 30, 0.0)[0]) == 1
    for i in range(21, 45):  # 0.8 s unseen: forgotten
        tracker.update(_frame(), i / 30, 0.0)
    assert tracker.confirmed == 0
    tracker.update(_frame((100, 100, 0.9)), 45 / 30, 0.0)
    assert int(tracker.update(_frame((100, 100, 0.9)), 46 / 30, 0.0)[0]) == 2


def test_low_score_detections_extend_tracks_but_do_not_start_them() -> None:
    tracker = ByteTracker()
    for i in range(5):
        tracker.update(_frame((100, 100, 0.9)), i / 30, 0.0)
    assert int(tracker.update(_frame((100, 100, 0.2)), 5 / 30, 0.0)[0]) == 1  # kept by a low score
    for i in range(6, 12):  # a low-score object elsewhere never gets an id
        ids = tracker.update(_frame((100, 100, 0.9), (600, 400, 0.3)), i / 30, 0.0)
        assert ids.tolist() == [1, -1]


def test_classes_are_tracked_apart() -> None:
    tracker = ByteTracker()
    for i in range(5):
        dets = _frame((100, 100, 0.9), (100, 100, 0.9))
        dets[1, 5] = 2
        ids = tracker.update(dets, i / 30, 0.0)
    assert sorted(ids.tolist()) == [1, 2]


def test_stream_clock_uses_pts_and_falls_back_to_capture_time() -> None:
    clock = StreamClock()
    assert clock.step(10.0, 100.0) == 0.0
    assert clock.step(10.04, 100.001) == pytest.approx(0.04)  # a file decoded fast: its own time
    assert clock.step(0.0, 100.5) == pytest.approx(0.499)  # pts started over (reconnect): wall time
    assert clock.step(None, 100.6) == pytest.approx(0.1)
    assert clock.step(500.0, 100.7) == pytest.approx(0.1)  # a pts jump: wall time


# ------------------------------------------------------------------------------------------------ quality

Tracker = Callable[[np.ndarray, float], np.ndarray]


def _ours() -> Tracker:
    tracker = ByteTracker()
    return lambda dets, t: tracker.update(dets, t, 1.7e9 + t)


def _reference() -> Tracker:
    trackers = pytest.importorskip("trackers", reason="the reference ByteTrack needs `trackers` (.ci/run)")
    sv = pytest.importorskip("supervision", reason="`trackers` needs supervision (.ci/run)")
    tracker = trackers.ByteTrackTracker(frame_rate=FPS)

    def update(dets: np.ndarray, t: float) -> np.ndarray:
        # The reference returns its detections in its own order: map them back by box.
        d = sv.Detections(
            xyxy=dets[:, :4].copy(), confidence=dets[:, 4].copy(), class_id=dets[:, 5].astype(int)
        )
        result = tracker.update(d)
        ids = np.full(len(dets), -1, dtype=np.int64)
        for box, tid in zip(result.xyxy, result.tracker_id, strict=True):
            ids[int(np.argmin(np.abs(dets[:, :4] - box).sum(axis=1)))] = tid
        return ids

    return update


def _score(make: Callable[[], Tracker]) -> dict[str, float]:
    mm = pytest.importorskip("motmetrics", reason="the tracking quality test needs motmetrics (test extra)")
    accs = []
    for seed in SEEDS:
        truth = scene(seed)
        dets = detect(truth, seed)
        track = make()
        acc = mm.MOTAccumulator(auto_id=True)
        for f, (t, d) in enumerate(zip(truth, dets, strict=True)):
            ids = track(d, f / FPS)
            kept = ids >= 0
            # (motmetrics' own distances.iou_matrix calls np.asfarray, gone in NumPy 2: the same
            # distance here, 1 - IoU, no match below IoU 0.5)
            iou = iou_matrix(t.boxes, d[kept, :4])
            dist = np.where(iou >= 0.5, 1.0 - iou, np.nan)
            acc.update(t.ids.tolist(), ids[kept].tolist(), dist)
        accs.append(acc)
    mh = mm.metrics.create()
    summary = mh.compute_many(
        accs, metrics=["idf1", "num_switches", "mota"], names=[str(s) for s in SEEDS], generate_overall=True
    )
    overall = summary.loc["OVERALL"]
    return {
        "idf1": float(overall["idf1"]),
        "idsw": float(overall["num_switches"]),
        "mota": float(overall["mota"]),
    }


def test_tracking_quality_matches_the_reference_bytetrack() -> None:
    ours = _score(_ours)
    reference = _score(_reference)
    print(f"\ntracking quality on {len(SEEDS)} synthetic scenes (300 frames each, {FPS:g} fps):")
    print(f"{'tracker':<28}{'IDF1':>8}{'ID sw.':>8}{'MOTA':>8}")
    for name, s in (("yolostream ByteTracker", ours), ("trackers.ByteTrackTracker", reference)):
        print(f"{name:<28}{s['idf1']:>8.3f}{s['idsw']:>8.0f}{s['mota']:>8.3f}")
    assert ours["idf1"] >= reference["idf1"] - 0.02
    assert ours["idf1"] > 0.6 and ours["mota"] > 0.5  # (not a degenerate scene where both fail alike)
