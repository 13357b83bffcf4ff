"""A constant-velocity Kalman filter for boxes, batched over all tracks of a stream.

State per track: ``cx, cy, w, h`` (box centre and size, source pixels) and their velocities; the
measurement is the box. Noise follows ByteTrack's (and BoT-SORT's width-height variant): standard
deviations proportional to the box size, ``1/20`` of it for positions, ``1/160`` for velocities.

Time is counted in *steps* of `STEP_S` (1/30 s), not in frames: a stream at 30 fps moves one step a frame
and behaves exactly as ByteTrack does; a stream that dropped frames (or runs at 10 fps) is predicted over
its real time gap, with the process noise of that many steps, so a gap does not break a track.

Every function takes and returns stacked arrays (``mean [N, 8]``, ``cov [N, 8, 8]``): one NumPy call per
stage for all tracks, instead of one per track.
"""

from __future__ import annotations

import numpy as np

STEP_S = 1.0 / 30.0
"""The time unit of the motion model: velocities are per step, noise is per step."""

_W_POS = 1.0 / 20.0
_W_VEL = 1.0 / 160.0


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` corner boxes → centre and size."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w, h], axis=1)


def cxcywh_to_xyxy(state: np.ndarray) -> np.ndarray:
    """The box part of ``[N, >=4]`` states → ``[N, 4]`` corners."""
    cx, cy, w, h = state[:, 0], state[:, 1], state[:, 2], state[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _size(mean: np.ndarray) -> np.ndarray:
    """``[N, 4]`` of ``w, h, w, h`` (noise scales), kept positive."""
    wh = np.maximum(mean[:, 2:4], 1.0)
    return np.concatenate([wh, wh], axis=1)


def initiate(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New tracks at ``[N, 4]`` corner boxes, at rest, with a wide velocity uncertainty."""
    n = len(boxes)
    mean = np.zeros((n, 8))
    mean[:, :4] = xyxy_to_cxcywh(boxes)
    size = _size(mean)
    std = np.concatenate([2 * _W_POS * size, 10 * _W_VEL * size], axis=1)
    cov = np.zeros((n, 8, 8))
    idx = np.arange(8)
    cov[:, idx, idx] = std**2
    return mean, cov


def predict(mean: np.ndarray, cov: np.ndarray, steps: float) -> tuple[np.ndarray, np.ndarray]:
    """Move every track `steps` steps ahead (``x += v * steps``; noise of `steps` steps)."""
    if len(mean) == 0:
        return mean, cov
    f = np.eye(8)
    f[:4, 4:] = steps * np.eye(4)
    size = _size(mean)
    var = np.concatenate([(_W_POS * size) ** 2, (_W_VEL * size) ** 2], axis=1) * steps
    mean = mean @ f.T
    cov = f @ cov @ f.T
    idx = np.arange(8)
    cov[:, idx, idx] += var
    return mean, cov


def update(mean: np.ndarray, cov: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Correct tracks ``[N]`` with their matched measurements, ``[N, 4]`` corner boxes."""
    if len(mean) == 0:
        return mean, cov
    z = xyxy_to_cxcywh(boxes)
    size = _size(mean)
    r = (_W_POS * size) ** 2  # [N, 4] measurement variances
    s = cov[:, :4, :4] + r[:, :, None] * np.eye(4)  # H P H^T + R
    pht = cov[:, :, :4]  # P H^T
    gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)  # P H^T S^-1 (S symmetric)
    innovation = z - mean[:, :4]
    mean = mean + np.einsum("nij,nj->ni", gain, innovation)
    cov = cov - gain @ cov[:, :4, :]  # (I - K H) P
    return mean, cov


__all__ = ["STEP_S", "cxcywh_to_xyxy", "initiate", "predict", "update", "xyxy_to_cxcywh"]
