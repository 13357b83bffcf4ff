"""What the inference worker does with a frame's detections around their publication: track them, then
follow the tracks through the stream's zones and lines.

One `StreamAnalysis` per stream, made on the stream's first frame from its config (``tracking`` with the
source's overrides, its ``zones`` and ``lines``); nothing is shared between streams. A stream without
tracking costs one dict lookup per frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from streamer.messages import FrameReady
from streamer.observability.metrics import zone_metrics
from streamer.output.protocol import AnalyticsMessage, ZoneEventRecord
from streamer.tracking import ByteTracker, TrackParams
from streamer.tracking.zones import CROSS, ENTER, ZoneEvent, ZoneLineCounter

if TYPE_CHECKING:
    from streamer.config import Config, SourceConfig, TrackingConfig


def track_params(cfg: TrackingConfig) -> TrackParams:
    return TrackParams(
        high_score=cfg.high_score, low_score=cfg.low_score, match_iou=cfg.match_iou,
        max_lost_s=cfg.max_lost_s, min_hits=cfg.min_hits,
    )  # fmt: skip


def _name(names: Sequence[str], class_id: int) -> str:
    return names[class_id] if 0 <= class_id < len(names) else str(class_id)


class StreamAnalysis:
    """One stream's tracker, and its zones and lines if it has any."""

    def __init__(self, stream: str, tracking: TrackingConfig, source: SourceConfig, names: Sequence[str]):
        self.stream = stream
        self.names = names
        self.tracker = ByteTracker(track_params(tracking))
        self.zones: ZoneLineCounter | None = None
        if source.zones or source.lines:
            self.zones = ZoneLineCounter(source.zones, source.lines, tracking.max_lost_s)
            m = zone_metrics()
            self._enter = {z.name: m.zone_events.labels(stream, z.name, "enter") for z in source.zones}
            self._exit = {z.name: m.zone_events.labels(stream, z.name, "exit") for z in source.zones}
            self._cross = {
                (ln.name, d): m.crossings.labels(stream, ln.name, d)
                for ln in source.lines
                for d in ("in", "out")
            }
            for child in [*self._enter.values(), *self._exit.values(), *self._cross.values()]:
                child.inc(0)  # (so that the metrics and status show each zone and line from the start)
            self._occupancy = m.occupancy
        self.latest: tuple[FrameReady, np.ndarray, np.ndarray] | None = None
        """The last frame's note, detections and track ids (for the picture of the stream)."""

    def track(self, note: FrameReady, dets: np.ndarray) -> np.ndarray:
        """Track ids of the frame's ``[K, 6]`` detections (source pixels), ``-1`` for none."""
        ids = self.tracker.update(dets, note.pts, note.capture_time)
        self.latest = (note, dets, ids)
        return ids

    def zone_message(self, note: FrameReady, dets: np.ndarray, ids: np.ndarray) -> AnalyticsMessage | None:
        """The frame's zone and line events as a message (after `track`); None when nothing happened."""
        if self.zones is None:
            return None
        z = self.zones
        events = z.update(
            self.tracker.time, note.width, note.height, dets[:, :4], dets[:, 5].astype(np.int64), ids
        )
        if not events:
            return None
        for e in events:
            self._count(e)
        return AnalyticsMessage(
            stream=note.stream, frame=note.index, pts=note.pts, capture_ts=note.capture_time,
            events=[
                ZoneEventRecord(
                    e.kind, e.name, e.track_id, e.class_id, _name(self.names, e.class_id),
                    direction=e.direction or None, reason=e.reason or None,
                )
                for e in events
            ],
            occupancy={
                zone: {_name(self.names, c): n for c, n in sorted(by_class.items()) if n}
                for zone, by_class in z.occupancy.items()
            },
            counts={line: dict(c) for line, c in z.counts.items()},
        )  # fmt: skip

    def _count(self, e: ZoneEvent) -> None:
        if e.kind == CROSS:
            self._cross[e.name, e.direction].inc()
            return
        (self._enter if e.kind == ENTER else self._exit)[e.name].inc()
        if self.zones is not None:
            n = self.zones.occupancy[e.name].get(e.class_id, 0)
            self._occupancy.labels(self.stream, e.name, _name(self.names, e.class_id)).set(n)


class Analysis:
    """Every stream's `StreamAnalysis`, by stream id (None for a stream with nothing to do)."""

    def __init__(self, cfg: Config, class_names: Sequence[str]) -> None:
        self._sources = {s.id: s for s in cfg.sources}
        self._cfg = cfg
        self._names = class_names
        self._streams: dict[str, StreamAnalysis | None] = {}

    def get(self, stream: str) -> StreamAnalysis | None:
        try:
            return self._streams[stream]
        except KeyError:
            source = self._sources.get(stream)
            made = None
            if source is not None and (tracking := self._cfg.tracking_for(source)).enabled:
                made = StreamAnalysis(stream, tracking, source, self._names)
            self._streams[stream] = made
            return made
