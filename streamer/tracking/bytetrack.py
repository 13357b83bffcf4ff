"""ByteTrack (Zhang et al., 2022) in NumPy: one tracker per stream, fed each frame's detections after NMS.

Each `ByteTracker.update` takes a frame's ``[K, 6]`` detections (``x1, y1, x2, y2, score, class_id`` in
source pixels) and the frame's time, and returns one track id per detection (``-1``: not part of a
confirmed track). The detections themselves are not changed: the tracker labels them.

The association, as in the paper:

1. every track is moved to the frame's time by its Kalman filter (`streamer.tracking.kalman`);
2. high-score detections (``score >= high_score``) are matched to the confirmed tracks, tracked or lost,
   by IoU with the predicted boxes (at least `match_iou`), one to one (linear assignment);
3. low-score detections (``low_score <= score < high_score``) are matched to the confirmed tracks still
   unmatched (IoU at least 0.5): an occluded object whose score fell keeps its track instead of losing it.
   Unlike the paper (and like Roboflow's `trackers`), lost tracks take part too: an object missed for a
   frame, then seen with a low score while still half hidden, is found again (IDF1 0.832 → 0.848 on the
   synthetic scenes of ``tests/tracking``);
4. the high-score detections left are matched to tentative tracks (IoU at least 0.3); a tentative track
   matched in `min_hits` frames in a row is confirmed and gets the stream's next id; one that misses a
   frame is dropped;
5. high-score detections still left start tentative tracks if their score is at least
   ``high_score + 0.1`` (ByteTrack's birth threshold);
6. confirmed tracks not matched are *lost*: kept (and predicted) for `max_lost_s` seconds of stream time,
   during which a detection can bring them back under the same id, then forgotten.

Detections are matched only to tracks of their own class. Time comes from the frames (`StreamClock`):
dropped frames are a longer step, not a break. The tracker keeps all of its state in arrays (one row per
track), so a frame costs a few NumPy calls whatever the number of objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from streamer.tracking import kalman

_LOW_IOU = 0.5  # the paper's second association: low-score detections to the tracks left
_TENTATIVE_IOU = 0.3  # new (unconfirmed) tracks to the high-score detections left
_BIRTH_MARGIN = 0.1  # a detection starts a track only with score >= high_score + this


@dataclass(frozen=True)
class TrackParams:
    """The tracker's thresholds (the ``tracking`` section of the config, without ``enabled``)."""

    high_score: float = 0.5
    low_score: float = 0.1
    match_iou: float = 0.2
    max_lost_s: float = 1.0
    min_hits: int = 2


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every ``[N, 4]`` box of `a` with every ``[M, 4]`` box of `b`: ``[N, M]``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / np.maximum(union, 1e-9)


def match(iou: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs ``(rows, cols)`` maximising the total IoU, each pair's IoU at least `min_iou`."""
    if iou.size == 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp)
    cost = np.where(iou >= min_iou, 1.0 - iou, 1e6)  # (pairs below the bar never beat a real one)
    rows, cols = linear_sum_assignment(cost)
    keep = iou[rows, cols] >= min_iou
    return rows[keep], cols[keep]


class StreamClock:
    """A stream's time in seconds, from its frames' pts where they run forward, else their capture times.

    A file's pts (offset on each loop) give its own time whatever the decoding speed; a live stream's pts
    may start over on a reconnect or jump, and then the capture (wall-clock) time between the frames is
    used for that step.
    """

    def __init__(self) -> None:
        self._pts: float | None = None
        self._capture: float | None = None

    def step(self, pts: float | None, capture_time: float) -> float:
        """Seconds since the previous frame (0.0 for the first)."""
        last_pts, last_capture = self._pts, self._capture
        self._pts, self._capture = pts, capture_time
        if last_capture is None:
            return 0.0
        wall = max(0.0, capture_time - last_capture)
        if pts is not None and last_pts is not None:
            dt = pts - last_pts
            if 0.0 < dt <= max(2.0, wall + 1.0):
                return dt
        return wall


class ByteTracker:
    """The tracks of one stream. Not thread-safe; one per stream, no shared state."""

    def __init__(self, params: TrackParams | None = None) -> None:
        self.params = params or TrackParams()
        self.clock = StreamClock()
        self.time = 0.0
        """The stream time (seconds) of the last update."""
        self._next_id = 1
        self.mean = np.zeros((0, 8))
        self.cov = np.zeros((0, 8, 8))
        self.ids = np.zeros(0, dtype=np.int64)
        """Track ids; 0 while a track is tentative."""
        self.cls = np.zeros(0, dtype=np.int64)
        self.hits = np.zeros(0, dtype=np.int64)
        self.seen = np.zeros(0)
        """Stream time at which each track was last matched."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def confirmed(self) -> int:
        """Confirmed tracks, tracked or lost."""
        return int(np.count_nonzero(self.ids))

    def update(self, dets: np.ndarray, pts: float | None, capture_time: float) -> np.ndarray:
        """Track one frame's detections; returns their track ids, ``[K]`` int64, ``-1`` for none.

        Parameters:
            dets: ``[K, >=6]`` rows of ``x1, y1, x2, y2, score, class_id`` in source pixels.
            pts: the frame's presentation time in seconds, or None.
            capture_time: the frame's capture time (Unix seconds).
        """
        p = self.params
        dt = self.clock.step(pts, capture_time)
        self.time += dt
        now = self.time
        out = np.full(len(dets), -1, dtype=np.int64)

        self.mean, self.cov = kalman.predict(self.mean, self.cov, dt / kalman.STEP_S)
        gone = (self.ids > 0) & (now - self.seen > p.max_lost_s)
        if gone.any():
            self._keep(~gone)

        boxes = np.asarray(dets[:, :4], dtype=np.float64) if len(dets) else np.zeros((0, 4))
        scores = dets[:, 4] if len(dets) else np.zeros(0)
        classes = dets[:, 5].astype(np.int64) if len(dets) else np.zeros(0, dtype=np.int64)
        high = np.flatnonzero(scores >= p.high_score)
        low = np.flatnonzero((scores >= p.low_score) & (scores < p.high_score))

        predicted = kalman.cxcywh_to_xyxy(self.mean)
        matched_t: list[np.ndarray] = []
        matched_d: list[np.ndarray] = []

        def associate(tracks: np.ndarray, cand: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
            iou = iou_matrix(predicted[tracks], boxes[cand])
            iou[self.cls[tracks][:, None] != classes[cand][None, :]] = 0.0
            rows, cols = match(iou, min_iou)
            matched_t.append(tracks[rows])
            matched_d.append(cand[cols])
            return np.delete(tracks, rows), np.delete(cand, cols)

        confirmed = np.flatnonzero(self.ids > 0)
        left_tracks, left_high = associate(confirmed, high, p.match_iou)
        associate(left_tracks, low, _LOW_IOU)
        tentative = np.flatnonzero(self.ids == 0)
        left_tentative, left_high = associate(tentative, left_high, _TENTATIVE_IOU)

        t_idx = np.concatenate(matched_t)
        d_idx = np.concatenate(matched_d)
        if len(t_idx):
            m, c = kalman.update(self.mean[t_idx], self.cov[t_idx], boxes[d_idx])
            self.mean[t_idx], self.cov[t_idx] = m, c
            self.seen[t_idx] = now
            self.hits[t_idx] += 1
            promote = t_idx[(self.ids[t_idx] == 0) & (self.hits[t_idx] >= p.min_hits)]
            self._confirm(promote)
        out[d_idx] = self.ids[t_idx]  # (0 for tentative tracks: made -1 below)

        keep = np.ones(len(self.ids), dtype=bool)
        keep[left_tentative] = False  # a tentative track that misses a frame is dropped
        self._keep(keep)

        born = left_high[scores[left_high] >= p.high_score + _BIRTH_MARGIN]
        if len(born):
            self._add(boxes[born], classes[born], now)
            if p.min_hits <= 1:
                new = np.arange(len(self.ids) - len(born), len(self.ids))
                self._confirm(new)
                out[born] = self.ids[new]
        out[out == 0] = -1
        return out

    def _confirm(self, rows: np.ndarray) -> None:
        n = len(rows)
        if n:
            self.ids[rows] = np.arange(self._next_id, self._next_id + n)
            self._next_id += n

    def _keep(self, mask: np.ndarray) -> None:
        self.mean, self.cov = self.mean[mask], self.cov[mask]
        self.ids, self.cls, self.hits = self.ids[mask], self.cls[mask], self.hits[mask]
        self.seen = self.seen[mask]

    def _add(self, boxes: np.ndarray, classes: np.ndarray, now: float) -> None:
        mean, cov = kalman.initiate(boxes)
        n = len(boxes)
        self.mean = np.concatenate([self.mean, mean])
        self.cov = np.concatenate([self.cov, cov])
        self.ids = np.concatenate([self.ids, np.zeros(n, dtype=np.int64)])
        self.cls = np.concatenate([self.cls, classes])
        self.hits = np.concatenate([self.hits, np.ones(n, dtype=np.int64)])
        self.seen = np.concatenate([self.seen, np.full(n, now)])


__all__ = ["ByteTracker", "StreamClock", "TrackParams", "iou_matrix", "match"]
