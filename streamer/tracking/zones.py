"""Zones and lines of one stream: which tracked objects are inside each zone, which crossed each line.

Pure logic, fed each frame's tracked detections by `streamer.workers.analysis`: `ZoneLineCounter.update`
returns the frame's events (`enter`, `exit`, `cross`) and keeps each zone's occupancy per class and each
line's running counts per direction. Geometry is in source pixels; normalised shapes are scaled to the
frame's size (again if it changes). See docs/config.md#sourceszones for the rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.config.analytics import LineConfig, ZoneConfig

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


class _Followed:
    """The tracked objects one zone or line follows, a row each: arrays, so that a frame costs a few
    vector operations, not a Python step per object."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.cls = np.zeros(0, dtype=np.int64)
        self.seen = np.zeros(0)
        """Stream time at which each was last seen."""
        self.inside = np.zeros(0, dtype=bool)
        """Zones: inside now."""
        self.point = np.zeros((0, 2))
        """Lines: the last anchor point off the line."""
        self._row: dict[int, int] = {}

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each of `ids`, ``-1`` for those not followed."""
        get = self._row.get
        return np.fromiter((get(t, -1) for t in ids.tolist()), dtype=np.int64, count=len(ids))

    def add(self, ids: np.ndarray, cls: np.ndarray, points: np.ndarray, now: float) -> np.ndarray:
        """Follow `ids` (not followed yet) from now on; their rows."""
        n = len(self.ids)
        rows = np.arange(n, n + len(ids))
        self.ids = np.concatenate([self.ids, ids])
        self.cls = np.concatenate([self.cls, cls])
        self.seen = np.concatenate([self.seen, np.full(len(ids), now)])
        self.inside = np.concatenate([self.inside, np.zeros(len(ids), dtype=bool)])
        self.point = np.concatenate([self.point, points])
        self._row.update(zip(ids.tolist(), rows.tolist(), strict=True))
        return rows

    def expire(self, now: float, max_lost_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stop following those not seen for more than `max_lost_s`: their ``(ids, classes, inside)``."""
        old = now - self.seen > max_lost_s
        if not old.any():
            return self.ids[:0], self.cls[:0], self.inside[:0]
        gone = self.ids[old], self.cls[old], self.inside[old]
        keep = ~old
        self.ids, self.cls, self.seen = self.ids[keep], self.cls[keep], self.seen[keep]
        self.inside, self.point = self.inside[keep], self.point[keep]
        self._row = dict(zip(self.ids.tolist(), range(len(self.ids)), strict=True))
        return gone


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
        self._followed: dict[str, _Followed] = {s.name: _Followed() for s in (*zones, *lines)}
        """Per zone or line name: the tracked objects it follows."""
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
            keep = self._wanted(zone.classes, class_ids)
            events += self._zone(
                zone.name, polygon, now, anchors(boxes[keep], zone.anchor), class_ids[keep], track_ids[keep]
            )
        for line, (a, b) in zip(self.lines, self._segments, strict=True):
            keep = self._wanted(line.classes, class_ids)
            events += self._line(
                line.name, a, b, now, anchors(boxes[keep], line.anchor), class_ids[keep], track_ids[keep]
            )
        return events

    def _wanted(self, classes: tuple[int | str, ...] | None, class_ids: np.ndarray) -> np.ndarray:
        return np.ones(len(class_ids), dtype=bool) if classes is None else np.isin(class_ids, list(classes))

    def _zone(
        self, name: str, polygon: np.ndarray, now: float, points: np.ndarray, classes: np.ndarray,
        ids: np.ndarray,
    ) -> list[ZoneEvent]:  # fmt: skip
        f = self._followed[name]
        occupancy = self.occupancy[name]
        rows = f.rows(ids)
        new = rows < 0
        if new.any():
            rows[new] = f.add(ids[new], classes[new], points[new], now)
        f.seen[rows] = now
        is_in = inside(points, polygon)
        was_in = f.inside[rows]
        f.inside[rows] = is_in
        events = []
        for i in np.flatnonzero(is_in != was_in).tolist():
            cid, tid = int(f.cls[rows[i]]), int(ids[i])
            occupancy[cid] = occupancy.get(cid, 0) + (1 if is_in[i] else -1)
            events.append(ZoneEvent(ENTER if is_in[i] else EXIT, name, tid, cid))
        gone, gone_cls, gone_in = f.expire(now, self.max_lost_s)
        for tid, cid in zip(gone[gone_in].tolist(), gone_cls[gone_in].tolist(), strict=True):
            occupancy[cid] -= 1
            events.append(ZoneEvent(EXIT, name, tid, cid, reason="lost"))
        return events

    def _line(
        self, name: str, a: np.ndarray, b: np.ndarray, now: float, points: np.ndarray, classes: np.ndarray,
        ids: np.ndarray,
    ) -> list[ZoneEvent]:  # fmt: skip
        f = self._followed[name]
        counts = self.counts[name]
        # A point on the line itself is on neither side: an object keeps the last point it had off the
        # line, so that touching the line and going back is no crossing, and going over it (in one move
        # or through points on it) is one. An object is followed from its first point off the line.
        here = side(points, a, b)
        off = here != 0
        rows = f.rows(ids)
        known = rows >= 0
        f.seen[rows[known]] = now
        start = ~known & off
        if start.any():
            f.add(ids[start], classes[start], points[start], now)
        moved = known & off
        r, before, after = rows[moved], f.point[rows[moved]], points[moved]
        flipped = (side(before, a, b) > 0) != (here[moved] > 0)
        # The move must also pass between A and B: A and B lie on either side of the move's own line (or
        # on it).
        d = after - before
        end_a = d[:, 0] * (a[1] - before[:, 1]) - d[:, 1] * (a[0] - before[:, 0])
        end_b = d[:, 0] * (b[1] - before[:, 1]) - d[:, 1] * (b[0] - before[:, 0])
        crossed = flipped & (end_a * end_b <= 0)
        f.point[r] = after
        events = []
        for i in np.flatnonzero(crossed).tolist():
            direction = IN if here[moved][i] < 0 else OUT  # (now on the left-hand side: it came in)
            counts[direction] += 1
            events.append(ZoneEvent(CROSS, name, int(ids[moved][i]), int(f.cls[r[i]]), direction))
        f.expire(now, self.max_lost_s)
        return events


__all__ = ["CROSS", "ENTER", "EXIT", "IN", "OUT", "ZoneEvent", "ZoneLineCounter", "anchors", "inside", "side"]
