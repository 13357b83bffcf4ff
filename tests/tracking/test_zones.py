"""Zones and lines (streamer.tracking.zones): the geometry, and the events that paths of tracked boxes
give."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.config.analytics import LineConfig, ZoneConfig
from streamer.tracking.zones import (
    CROSS,
    ENTER,
    EXIT,
    IN,
    OUT,
    ZoneEvent,
    ZoneLineCounter,
    anchors,
    inside,
    side,
)

W, H = 640, 480


def _boxes(*points: tuple[float, float], size: float = 20.0) -> np.ndarray:
    """Boxes whose bottom-centre is each (x, y)."""
    return np.array([[x - size / 2, y - size, x + size / 2, y] for x, y in points], dtype=np.float64).reshape(
        -1, 4
    )


Path = list[tuple[float, float] | None]


def _run(
    counter: ZoneLineCounter, paths: dict[int, Path], classes: dict[int, int] | None = None,
    dt: float = 0.1, start: float = 0.0,
) -> list[tuple[int, ZoneEvent]]:  # fmt: skip
    """Feed each track's path (None: not seen that frame) frame by frame, frame ``i`` at time
    ``start + i * dt``; ``(frame, event)`` pairs."""
    classes = classes or {}
    frames = max(len(p) for p in paths.values())
    out = []
    for i in range(frames):
        seen = [(tid, p[i]) for tid, p in paths.items() if i < len(p) and p[i] is not None]
        boxes = _boxes(*[pt for _, pt in seen if pt is not None])
        ids = np.array([tid for tid, _ in seen], dtype=np.int64)
        cls = np.array([classes.get(tid, 0) for tid, _ in seen], dtype=np.int64)
        out += [(i, e) for e in counter.update(start + i * dt, W, H, boxes, cls, ids)]
    return out


def test_anchors_are_the_bottom_centre_or_the_centre() -> None:
    boxes = np.array([[10, 20, 30, 60]], dtype=float)
    np.testing.assert_allclose(anchors(boxes, "bottom"), [[20, 60]])
    np.testing.assert_allclose(anchors(boxes, "center"), [[20, 40]])


def test_inside_a_concave_polygon() -> None:
    # An L shape: the notch at the top right is outside.
    poly = np.array([[0, 0], [10, 0], [10, 5], [5, 5], [5, 10], [0, 10]], dtype=float)
    points = np.array([[2, 2], [8, 2], [2, 8], [8, 8], [-1, 5], [11, 2]], dtype=float)
    assert inside(points, poly).tolist() == [True, True, True, False, False, False]
    assert inside(np.zeros((0, 2)), poly).shape == (0,)


def test_side_is_positive_on_the_right_hand_of_a_to_b_on_the_picture() -> None:
    a, b = np.array([0.0, 300.0]), np.array([640.0, 300.0])  # left to right: right-hand is down the picture
    assert side(np.array([100.0, 400.0]), a, b) > 0
    assert side(np.array([100.0, 200.0]), a, b) < 0
    assert side(np.array([100.0, 300.0]), a, b) == 0


def _line(**kw: object) -> LineConfig:
    return LineConfig.model_validate({"name": "door", "points": [[100, 300], [500, 300]], **kw})


def _zone(**kw: object) -> ZoneConfig:
    return ZoneConfig.model_validate(
        {"name": "yard", "polygon": [[200, 100], [400, 100], [400, 300], [200, 300]], **kw}
    )


def test_crossings_have_directions_and_running_counts() -> None:
    counter = ZoneLineCounter((), (_line(),), max_lost_s=1.0)
    up = [(300, 400 - 20 * i) for i in range(10)]  # from below (right-hand side) to above: in
    down = [(250, 200 + 20 * i) for i in range(10)]  # out
    events = _run(counter, {1: up, 2: down, 3: list(reversed(up))})
    crossings = sorted((e.track_id, e.direction) for _, e in events)
    assert crossings == [(1, IN), (2, OUT), (3, OUT)]
    assert all(e.kind == CROSS and e.name == "door" for _, e in events)
    assert counter.counts == {"door": {IN: 1, OUT: 2}}


def test_a_move_past_the_end_of_the_segment_is_no_crossing() -> None:
    counter = ZoneLineCounter((), (_line(),), max_lost_s=1.0)
    beside = [(600, 400 - 20 * i) for i in range(10)]  # x = 600: past B (500, 300)
    diagonal = [(80 + 10 * i, 320 - 10 * i) for i in range(6)]  # crosses y = 300 at x = 100: on A itself
    events = _run(counter, {1: beside, 2: diagonal})
    assert [(e.track_id, e.direction) for _, e in events] == [(2, IN)]


def test_touching_the_line_and_going_back_is_no_crossing_jitter_across_counts_each_time() -> None:
    counter = ZoneLineCounter((), (_line(),), max_lost_s=1.0)
    touch = [(300, 320), (300, 310), (300, 300), (300, 300), (300, 310), (300, 320)]
    events = _run(counter, {1: touch})
    assert events == []
    jitter = [(300, 302), (300, 298), (300, 302), (300, 298)]
    events = _run(counter, {2: jitter})
    assert [e.direction for _, e in events] == [IN, OUT, IN]
    assert counter.counts["door"] == {IN: 2, OUT: 1}


def test_a_track_missed_for_a_few_frames_still_counts_its_crossing() -> None:
    counter = ZoneLineCounter((), (_line(),), max_lost_s=1.0)
    path: Path = [
        (300, 400),
        (300, 360),
        None,
        None,
        None,
        (300, 240),
        (300, 200),
    ]
    events = _run(counter, {1: path})
    assert [(i, e.direction) for i, e in events] == [(5, IN)]


def test_zone_enter_exit_and_occupancy_per_class() -> None:
    counter = ZoneLineCounter((_zone(),), (), max_lost_s=1.0)
    through = [(100 + 40 * i, 200) for i in range(10)]  # x 100..460: inside for x in 200..400
    born_inside = [(300, 250)] * 4
    events = _run(counter, {1: through, 2: born_inside}, classes={1: 0, 2: 3})
    kinds = [(i, e.kind, e.track_id, e.class_id) for i, e in events]
    assert kinds[:2] == [(0, ENTER, 2, 3), (3, ENTER, 1, 0)]
    assert (8, EXIT, 1, 0) in kinds
    # Track 2 was last seen at frame 3 (t = 0.3 s): it exits as lost once max_lost_s has passed.
    assert counter.occupancy == {"yard": {0: 0, 3: 1}}
    events = _run(counter, {2: [None] * 10}, start=1.0)
    lost = [(i, e) for i, e in events if e.kind == EXIT]
    assert len(lost) == 1 and lost[0][1].track_id == 2 and lost[0][1].reason == "lost"
    assert lost[0][0] == 4  # t = 1.4 s, the first frame more than 1 s after the last sighting
    assert counter.occupancy == {"yard": {0: 0, 3: 0}}


def test_class_filters_and_untracked_boxes_are_left_out() -> None:
    counter = ZoneLineCounter((_zone(classes=(2,)),), (_line(classes=(0,)),), max_lost_s=1.0)
    path = [(300, 350 - 20 * i) for i in range(10)]  # enters the zone and crosses the line
    events = _run(counter, {1: path, 2: path, -1: path}, classes={1: 0, 2: 2, -1: 2})
    # Both happen at frame 3 (anchor y 310 -> 290); a frame's zone events come before its crossings.
    assert [(i, e.kind, e.track_id) for i, e in events] == [(3, ENTER, 2), (3, CROSS, 1)]


@pytest.mark.parametrize("size", [(640, 480), (1280, 960)])
def test_normalized_shapes_follow_the_frame_size(size: tuple[int, int]) -> None:
    w, h = size
    zone = ZoneConfig.model_validate(
        {"name": "left", "coords": "normalized", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}
    )
    line = LineConfig.model_validate({"name": "mid", "coords": "normalized", "points": [[0, 0.5], [1, 0.5]]})
    counter = ZoneLineCounter((zone,), (line,), max_lost_s=1.0)
    [(_, poly)] = counter.polygons(w, h)
    np.testing.assert_allclose(poly[2], [w / 2, h])
    boxes = [_boxes((0.25 * w, 0.6 * h)), _boxes((0.25 * w, 0.4 * h)), _boxes((0.75 * w, 0.4 * h))]
    events = []
    for i, b in enumerate(boxes):
        events += counter.update(i * 0.1, w, h, b, np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64))
    assert [(e.kind, e.direction) for e in events] == [(ENTER, ""), (CROSS, IN), (EXIT, "")]
