"""Frozen-picture detection: a live stream whose picture has not changed for `after_s` seconds.

A camera whose encoder froze keeps sending frames, so a read timeout never fires; what gives it away is
that every frame decodes to the same picture. Each frame is reduced to a signature: the picture shrunk
to 16×9 cells (each cell the mean of its area, per channel). Two frames show the same picture when no
cell differs by more than `TOLERANCE` (of 255): a frozen picture re-encoded at each keyframe moves cells
by a few levels at most, so this tolerates compression noise, while motion moves some cell by more.

A scene that is really static also matches: averaging a cell of a 1080p frame (~120×120 pixels) removes
sensor noise, and a camera's encoder often sends static areas as unchanged blocks. Enable detection only
on streams whose picture always changes (traffic, production lines, a clock in the overlay).

Cost: ~0.5 ms per frame, 1080p or 4K (the frame is sampled on a grid before the area average).
"""

from __future__ import annotations

import cv2
import numpy as np

SIGNATURE_SIZE = (16, 9)
"""(width, height) of the signature in cells."""
TOLERANCE = 4
"""Largest difference of a cell (0–255) between two frames that still counts as the same picture.

Measured on a detailed picture re-encoded by x264 (crf 28–35, a keyframe every frame): cells move by up
to 4 levels; a change of 5 in a cell of a 1080p frame takes a ~15×15 pixel object at full contrast.
"""
_SAMPLES_PER_CELL = 32
"""The frame is first sampled on a grid of this many points per cell side (nearest pixel): ~0.5 ms for
1080p, against ~4 ms for an area average over every pixel, with the same result to ±1 level."""


def signature(image: np.ndarray) -> np.ndarray:
    """The picture of `image` (``HxWxC`` or ``HxW`` uint8) as ``9x16(xC)`` uint8 cell means."""
    w, h = SIGNATURE_SIZE
    grid = (w * _SAMPLES_PER_CELL, h * _SAMPLES_PER_CELL)
    if image.shape[1] > grid[0] and image.shape[0] > grid[1]:
        image = cv2.resize(image, grid, interpolation=cv2.INTER_NEAREST)
    return cv2.resize(image, SIGNATURE_SIZE, interpolation=cv2.INTER_AREA)


def same_picture(a: np.ndarray, b: np.ndarray, tolerance: int = TOLERANCE) -> bool:
    """Whether two signatures show the same picture (no cell differs by more than `tolerance`)."""
    if a.shape != b.shape:
        return False
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0)) <= tolerance


class FrozenDetector:
    """Reports a picture that stayed the same for `after_s` seconds of stream time.

    `update` is given every frame with its pts (stream time). After a report the timing starts over, so
    a picture that stays frozen is reported again `after_s` later. `reset` forgets the timing when the
    stream is reopened (its clock restarts); with ``keep_picture`` the frozen picture is remembered, and
    `carried` tells whether the new connection still shows it.
    """

    def __init__(self, after_s: float, tolerance: int = TOLERANCE) -> None:
        if after_s <= 0:
            raise ValueError(f"after_s must be > 0, got {after_s}")
        self.after_s = after_s
        self.tolerance = tolerance
        self._ref: np.ndarray | None = None
        self._since: float | None = None
        self.carried = False
        """The frames since the last `reset(keep_picture=True)` all show the picture frozen before it."""

    def update(self, image: np.ndarray, t: float | None) -> float | None:
        """Feed one frame with its pts `t` (seconds; None: unknown, the frame only counts as a picture).

        Returns how long the picture has been frozen when that reaches `after_s` (then starts over).
        """
        sig = signature(image)
        if self._ref is None or not same_picture(sig, self._ref, self.tolerance):
            self._ref, self._since, self.carried = sig, t, False
            return None
        if t is None:
            return None
        if self._since is None or t < self._since:  # a new connection, or the stream's clock went back
            self._since = t
        held = t - self._since
        if held >= self.after_s:
            self._since = t
            return held
        return None

    def reset(self, keep_picture: bool = False) -> None:
        """The stream is being reopened: its clock starts over; remember the picture if it was frozen."""
        self._since = None
        self.carried = keep_picture and self._ref is not None
        if not keep_picture:
            self._ref = None
