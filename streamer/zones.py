"""Zones and lines of one stream: which tracked objects are inside each zone, which crossed each line.

Pure logic, fed each frame's tracked detections by `streamer.workers.analysis`: `ZoneLineCounter.update`
returns the frame's events (`enter`, `exit`, `cross`) and keeps each zone's occupancy per class and each
line's running counts per direction. Geometry is in source pixels; normalised shapes are scaled to the
frame's size (again if it changes). See docs/config.md#sourceszones for the rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streamer.config_analytics import LineConfig, ZoneConfig

ENTER, EXIT, CROSS = "enter", "exit", "cross"
IN, OUT = "in", "out"


@dataclass(frozen=True)
class ZoneEvent:
    kind: str
    """`ENTER`, `EXIT` or `CROSS`."""
    name: str
    """The zone's or the line's name."""
    track_id: int
    class_id: int
    direction: str = ""
    """`IN` or `OUT` for a crossing."""
    reason: str = ""
    """``lost`` for the exit of a track that ended inside the zone."""


def anchors(boxes: np.ndarray, anchor: str) -> np.ndarray:
    """``[K, 2]`` points of ``[K, 4]`` boxes: bottom-centre or centre."""
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    y = boxes[:, 3] if anchor == "bottom" else (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([x, y], axis=1)


def inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Which of ``[K, 2]`` `points` lie in `polygon` ``[N, 2]`` (even-odd rule), ``[K]`` bool."""
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    straddles = (y1 <= y) != (y2 <= y)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_x = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    return np.count_nonzero(straddles & (x < cross_x), axis=1) % 2 == 1


def side(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(B - A) x (P - A)`` for each point: > 0 on the right-hand side of A→B as seen on the picture."""
    d = b - a
    return d[0] * (points[..., 1] - a[1]) - d[1] * (points[..., 0] - a[0])


@dataclass
class _Track:
    point: np.ndarray
    class_id: int
    seen: float
    zones: set[str] = field(default_factory=set)


class ZoneLineCounter:
    """One stream's zones and lines, with the state of every tracked object they concern."""

    def __init__(
        self, zones: tuple[ZoneConfig, ...], lines: tuple[LineConfig, ...], max_lost_s: float
    ) -> None:
        self.zones = zones
        self.lines = lines
        self.max_lost_s = max_lost_s
        self._size: tuple[int, int] | None = None
        self._polygons: list[np.ndarray] = []
        self._segments: list[tuple[np.ndarray, np.ndarray]] = []
        self._tracks: dict[str, dict[int, _Track]] = {}
        """Per zone or line name: the tracked objects it counts, by track id."""
        self.occupancy: dict[str, dict[int, int]] = {z.name: {} for z in zones}
        """Zone → class id → objects inside now."""
        self.counts: dict[str, dict[str, int]] = {ln.name: {IN: 0, OUT: 0} for ln in lines}
        """Line → direction → crossings so far."""

    def _scale(self, width: int, height: int) -> None:
        if self._size == (width, height):
            return
        self._size = (width, height)

        def pixels(points: tuple[tuple[float, float], ...], coords: str) -> np.ndarray:
            xy = np.asarray(points, dtype=np.float64)
            return xy * np.array([width, height]) if coords == "normalized" else xy

        self._polygons = [pixels(z.polygon, z.coords) for z in self.zones]
        self._segments = [(p[0], p[1]) for p in (pixels(ln.points, ln.coords) for ln in self.lines)]

    def polygons(self, width: int, height: int) -> list[tuple[str, np.ndarray]]:
        """Each zone's polygon in pixels of a `width` x `height` frame (for drawing)."""
        self._scale(width, height)
        return [(z.name, p) for z, p in zip(self.zones, self._polygons, strict=True)]

    def segments(self, width: int, height: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Each line's ends in pixels of a `width` x `height` frame (for drawing)."""
        self._scale(width, height)
        return [(ln.name, a, b) for ln, (a, b) in zip(self.lines, self._segments, strict=True)]

    def update(
        self,
        now: float,
        width: int,
        height: int,
        boxes: np.ndarray,
        class_ids: np.ndarray,
        track_ids: np.ndarray,
    ) -> list[ZoneEvent]:
        """One frame: ``[K, 4]`` boxes of tracked objects with their classes and ids (``-1``: skipped),
        at stream time `now` (seconds). Returns the frame's events, zones first, in config order."""
        self._scale(width, height)
        events: list[ZoneEvent] = []
        tracked = track_ids > 0
        boxes, class_ids, track_ids = boxes[tracked], class_ids[tracked], track_ids[tracked]
        for zone, polygon in zip(self.zones, self._polygons, strict=True):
            events += self._zone(zone, polygon, now, boxes, class_ids, track_ids)
        for line, (a, b) in zip(self.lines, self._segments, strict=True):
            events += self._line(line, a, b, now, boxes, class_ids, track_ids)
        return events

    def _wanted(self, classes: tuple[int | str, ...] | None, class_ids: np.ndarray) -> np.ndarray:
        return np.ones(len(class_ids), dtype=bool) if classes is None else np.isin(class_ids, list(classes))

    def _zone(
        self, zone: ZoneConfig, polygon: np.ndarray, now: float, boxes: np.ndarray, classes: np.ndarray,
        ids: np.ndarray,
    ) -> list[ZoneEvent]:  # fmt: skip
        tracks = self._tracks.setdefault(zone.name, {})
        occupancy = self.occupancy[zone.name]
        events = []
        keep = self._wanted(zone.classes, classes)
        points = anchors(boxes[keep], zone.anchor)
        now_in = inside(points, polygon)
        for point, is_in, cid, tid in zip(points, now_in, classes[keep], ids[keep], strict=True):
            track = tracks.get(int(tid))
            was_in = track is not None and zone.name in track.zones
            if track is None:
                track = tracks[int(tid)] = _Track(point, int(cid), now)
            track.point, track.seen = point, now
            if is_in and not was_in:
                track.zones.add(zone.name)
                occupancy[track.class_id] = occupancy.get(track.class_id, 0) + 1
                events.append(ZoneEvent(ENTER, zone.name, int(tid), track.class_id))
            elif was_in and not is_in:
                track.zones.discard(zone.name)
                occupancy[track.class_id] -= 1
                events.append(ZoneEvent(EXIT, zone.name, int(tid), track.class_id))
        for tid, track in list(tracks.items()):
            if now - track.seen > self.max_lost_s:
                del tracks[tid]
                if zone.name in track.zones:
                    occupancy[track.class_id] -= 1
                    events.append(ZoneEvent(EXIT, zone.name, tid, track.class_id, reason="lost"))
        return events

    def _line(
        self, line: LineConfig, a: np.ndarray, b: np.ndarray, now: float, boxes: np.ndarray,
        classes: np.ndarray, ids: np.ndarray,
    ) -> list[ZoneEvent]:  # fmt: skip
        tracks = self._tracks.setdefault(line.name, {})
        counts = self.counts[line.name]
        events = []
        keep = self._wanted(line.classes, classes)
        points = anchors(boxes[keep], line.anchor)
        for point, cid, tid in zip(points, classes[keep], ids[keep], strict=True):
            # A point on the line itself is on neither side: the track keeps the last point it had off
            # the line, so that touching the line and going back is no crossing and going over it (in one
            # move or through points on it) is one.
            here = float(side(point, a, b))
            track = tracks.get(int(tid))
            if track is None:
                if here != 0:
                    tracks[int(tid)] = _Track(point, int(cid), now)
                continue
            track.seen = now
            if here == 0:
                continue
            before = float(side(track.point, a, b))
            if (before > 0) != (here > 0):
                # The move must also pass between A and B: the ends lie on either side of the move's own
                # line (or on it).
                ends = side(np.stack([a, b]), track.point, point)
                if ends[0] * ends[1] <= 0:
                    direction = IN if before > 0 else OUT
                    counts[direction] += 1
                    events.append(ZoneEvent(CROSS, line.name, int(tid), track.class_id, direction))
            track.point = point
        for tid, track in list(tracks.items()):
            if now - track.seen > self.max_lost_s:
                del tracks[tid]
        return events


__all__ = ["CROSS", "ENTER", "EXIT", "IN", "OUT", "ZoneEvent", "ZoneLineCounter", "anchors", "inside", "side"]
