"""Tracking, zones and lines end to end: spots moving along known paths through a real daemon.

Three bright spots cross a 640x360 H.264 clip; the spots oracle (`write_spots_model`) finds each of them
in every frame. The daemon (a real `yolostream run` subprocess) tracks them and follows them through a
line and two zones. The test checks what a subscriber receives: each spot keeps one track id for the
whole clip, the line reports one crossing per spot that crossed it with the right direction, and the
zones' enter/exit events are those the paths give, in the frames they give them (within a frame: the
oracle finds a spot to a cell of 8 source pixels).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.output.protocol import AnalyticsMessage, DetectionsMessage
from tests.support.daemon import metrics_url, scrape, start_daemon, value
from tests.support.media import moving_spots_clip
from tests.support.models import write_spots_model

pytestmark = pytest.mark.slow

W, H, FRAMES = 640, 360, 80
LINE_X = 320.0
"""The line ``gate``: x = 320, drawn from the top to the bottom of the picture (A above B)."""
YARD = (400.0, 520.0, 30.0, 130.0)
"""The zone ``yard`` (x1, x2, y1, y2): spot A goes through it."""
DOCK = (500.0, 640.0, 230.0, 330.0)
"""The zone ``dock``: spot B starts inside it and leaves."""


def _paths() -> dict[str, list[tuple[float, float]]]:
    """Centres per frame: A left to right (top), C left to right (middle, faster, later), B right to left."""
    a = [(40.0 + 7.0 * i, 80.0) for i in range(FRAMES)]
    b = [(600.0 - 7.0 * i, 280.0) for i in range(FRAMES)]
    c = [(40.0 + 9.0 * max(0, i - 20), 180.0) for i in range(FRAMES)]
    return {"A": a, "B": b, "C": c}


def _first(path: list[tuple[float, float]], test) -> int:  # type: ignore[no-untyped-def]
    return next(i for i, p in enumerate(path) if test(p))


def test_tracks_zones_and_lines_of_moving_spots(tmp_path: Path) -> None:
    paths = _paths()
    model = write_spots_model(tmp_path / "spots.onnx")
    moving_spots_clip(tmp_path / "spots.mp4", (W, H), list(paths.values()), radius=20)
    x1, x2, y1, y2 = YARD
    d1, d2, e1, e2 = DOCK
    config = (
        f"model:\n  onnx: {model}\n  class_names: [spot]\nengine:\n  max_batch: 2\n"
        "tracking: {enabled: true}\n"
        "sources:\n  - id: cam\n    url: spots.mp4\n"
        f"    lines:\n      - {{name: gate, anchor: center, points: [[{LINE_X}, 0], [{LINE_X}, {H}]]}}\n"
        "    zones:\n"
        f"      - {{name: yard, anchor: center, polygon: [[{x1}, {y1}], [{x2}, {y1}], [{x2}, {y2}], "
        f"[{x1}, {y2}]]}}\n"
        f"      - {{name: dock, anchor: center, coords: normalized, polygon: [[{d1 / W}, {e1 / H}], "
        f"[{d2 / W}, {e1 / H}], [{d2 / W}, {e2 / H}], [{d1 / W}, {e2 / H}]], classes: [spot]}}\n"
        "  - id: other\n    url: spots.mp4\n    loop: true\n    realtime: true\n"
        "    tracking: {enabled: false}\n"
        "publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 0\n"
        "metrics:\n  listen: 127.0.0.1:0\n"
    )
    # A second stream, looping, keeps the daemon running once `cam` has ended, to read its metrics.
    daemon = start_daemon(tmp_path, config, analytics=True)
    try:
        daemon.until_ended({"cam"})
        url = metrics_url(daemon)
        _, samples = scrape(url)
        status = subprocess.run(
            [sys.executable, "-m", "streamer", "status", "--url", url, "--interval", "0"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    messages = [m for m in daemon.messages if m.stream == "cam"]
    dets = [m for m in messages if isinstance(m, DetectionsMessage)]
    assert [m.frame for m in dets] == list(range(FRAMES))

    # Each spot keeps one track id: every detection near a spot carries that spot's id (once confirmed).
    ids: dict[str, set[int | None]] = {name: set() for name in paths}
    for msg in dets:
        assert len(msg.detections) == 3, (msg.frame, msg.detections)
        for d in msg.detections:
            centre = np.array([(d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2])
            name, dist = min(
                ((n, float(np.hypot(*(centre - p[msg.frame])))) for n, p in paths.items()), key=lambda t: t[1]
            )
            assert dist <= 8.0, (msg.frame, name, centre)
            if msg.frame >= 1:  # (min_hits = 2: the first frame goes out without ids)
                ids[name].add(d.track_id)
    assert all(len(s) == 1 and None not in s for s in ids.values()), ids
    track = {name: next(iter(s)) for name, s in ids.items()}
    assert len(set(track.values())) == 3
    spot_of = {tid: name for name, tid in track.items()}

    ana = [m for m in messages if isinstance(m, AnalyticsMessage)]
    assert not [m for m in daemon.messages if isinstance(m, AnalyticsMessage) and m.stream != "cam"]
    assert [m.seq for m in ana] == list(range(len(ana)))
    events = [(m.frame, e) for m in ana for e in m.events]
    assert all(e.class_name == "spot" for _, e in events)

    # The line: A and C cross it left to right (from its right-hand side looking from top to bottom:
    # 'in'), B right to left ('out'); one crossing each, in the frame the path crosses x = 320.
    crossings = sorted((spot_of[e.track_id], e.direction, f) for f, e in events if e.event == "cross")
    expected = sorted(
        [
            ("A", "in", _first(paths["A"], lambda p: p[0] > LINE_X)),
            ("B", "out", _first(paths["B"], lambda p: p[0] < LINE_X)),
            ("C", "in", _first(paths["C"], lambda p: p[0] > LINE_X)),
        ]
    )
    assert [(s, d) for s, d, _ in crossings] == [(s, d) for s, d, _ in expected]
    for (_, _, got), (_, _, want) in zip(crossings, expected, strict=True):
        assert abs(got - want) <= 1, (crossings, expected)
    assert ana[-1].counts == {"gate": {"in": 2, "out": 1}}

    # The zones: A enters and leaves the yard; B is in the dock from its first tracked frame, then leaves.
    zone_events = [(e.name, e.event, spot_of[e.track_id], f) for f, e in events if e.event != "cross"]
    in_yard = [x1 < x < x2 and y1 < y < y2 for x, y in paths["A"]]
    in_dock = [d1 < x < d2 and e1 < y < e2 for x, y in paths["B"]]
    expected_zones = [
        ("dock", "enter", "B", 1),  # its first frame with a track id
        ("dock", "exit", "B", in_dock.index(False)),
        ("yard", "enter", "A", in_yard.index(True)),
        ("yard", "exit", "A", in_yard.index(True) + in_yard[in_yard.index(True) :].index(False)),
    ]
    got_zones = sorted(zone_events, key=lambda t: (t[0], t[3]))
    assert [t[:3] for t in got_zones] == [t[:3] for t in expected_zones], got_zones
    for got, want in zip(got_zones, expected_zones, strict=True):
        assert abs(got[3] - want[3]) <= 1, (got_zones, expected_zones)
    assert ana[-1].occupancy == {"yard": {}, "dock": {}}

    # The same counts in Prometheus and in `yolostream status`.
    p = "yolostream_"
    assert value(samples, p + "line_crossings_total", stream="cam", line="gate", direction="in") == 2
    assert value(samples, p + "line_crossings_total", stream="cam", line="gate", direction="out") == 1
    for zone in ("yard", "dock"):
        for event in ("enter", "exit"):
            assert value(samples, p + "zone_events_total", stream="cam", zone=zone, event=event) == 1
        assert value(samples, p + "zone_occupancy", stream="cam", zone=zone, **{"class": "spot"}) == 0
    assert status.returncode == 0, status.stderr
    assert re.search(r"^gate +cam +2 +1$", status.stdout, re.M), status.stdout
    assert re.search(r"^yard +cam +1 +1 +0 +-$", status.stdout, re.M), status.stdout
