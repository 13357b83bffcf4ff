"""What the inference worker does with a frame's detections before they are published: track them.

One `StreamAnalysis` per stream, made on the stream's first frame from its config (``tracking`` with the
source's overrides); nothing is shared between streams. A stream without tracking costs one dict lookup
per frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from streamer.messages import FrameReady
from streamer.tracking import ByteTracker, TrackParams

if TYPE_CHECKING:
    from streamer.config import Config, TrackingConfig


def track_params(cfg: TrackingConfig) -> TrackParams:
    return TrackParams(
        high_score=cfg.high_score, low_score=cfg.low_score, match_iou=cfg.match_iou,
        max_lost_s=cfg.max_lost_s, min_hits=cfg.min_hits,
    )  # fmt: skip


class StreamAnalysis:
    """One stream's tracker."""

    def __init__(self, tracking: TrackingConfig) -> None:
        self.tracker = ByteTracker(track_params(tracking))

    def track(self, note: FrameReady, dets: np.ndarray) -> np.ndarray:
        """Track ids of the frame's ``[K, 6]`` detections (source pixels), ``-1`` for none."""
        return self.tracker.update(dets, note.pts, note.capture_time)


class Analysis:
    """Every stream's `StreamAnalysis`, by stream id (None for a stream with nothing to do)."""

    def __init__(self, cfg: Config) -> None:
        self._sources = {s.id: s for s in cfg.sources}
        self._cfg = cfg
        self._streams: dict[str, StreamAnalysis | None] = {}

    def get(self, stream: str) -> StreamAnalysis | None:
        try:
            return self._streams[stream]
        except KeyError:
            source = self._sources.get(stream)
            tracking = self._cfg.tracking_for(source) if source is not None else None
            made = StreamAnalysis(tracking) if tracking is not None and tracking.enabled else None
            self._streams[stream] = made
            return made
