"""Synthetic ground truth for tracker tests: objects on known paths, and a noisy detector that sees them.

`scene` makes objects that enter and leave the picture, cross each other's paths (pairs moving towards
each other on the same line), and pass in front of each other; `detect` turns the truth of each frame
into what a real detector gives: jittered boxes, missed objects (more often while occluded), low scores
(mostly while occluded) and false positives. Everything is seeded, so a score is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WIDTH, HEIGHT = 1280, 720
FPS = 30.0


@dataclass
class Truth:
    """One frame's objects: ids ``[N]`` and boxes ``[N, 4]`` (x1, y1, x2, y2), nearest last."""

    ids: np.ndarray
    boxes: np.ndarray
    depth: np.ndarray


def _box(cx: float, cy: float, w: float, h: float) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def scene(seed: int, frames: int = 300, objects: int = 14) -> list[Truth]:
    """Ground truth of `frames` frames: `objects` objects, a third of them in crossing pairs."""
    rng = np.random.default_rng(seed)
    paths = []  # (start, end, p0, velocity, size, depth)
    k = 0
    while len(paths) < objects:
        w = rng.uniform(40, 110)
        h = w * rng.uniform(1.2, 2.2)
        start = int(rng.integers(0, frames // 2))
        life = int(rng.integers(frames // 3, frames))
        speed = rng.uniform(2.0, 7.0)  # px per frame
        if k % 3 == 0 and len(paths) + 2 <= objects:  # a crossing pair: head-on along one line
            y = rng.uniform(0.25, 0.75) * HEIGHT
            angle = rng.uniform(-0.3, 0.3)
            v = speed * np.array([np.cos(angle), np.sin(angle)])
            meet = start + life // 2
            x_meet = rng.uniform(0.3, 0.7) * WIDTH
            for sign, depth in ((1.0, rng.uniform()), (-1.0, rng.uniform())):
                p0 = np.array([x_meet, y]) - sign * v * (meet - start)
                paths.append((start, start + life, p0, sign * v, (w, h), depth))
        else:
            p0 = np.array([rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)])
            angle = rng.uniform(0, 2 * np.pi)
            v = speed * np.array([np.cos(angle), np.sin(angle)])
            paths.append((start, start + life, p0, v, (w, h), rng.uniform()))
        k += 1
    out = []
    for f in range(frames):
        ids, boxes, depth = [], [], []
        for i, (start, end, p0, v, (w, h), d) in enumerate(paths):
            if not start <= f < end:
                continue
            t = f - start
            cx, cy = p0 + v * t + np.array([0.0, 8.0 * np.sin(t / 25.0)])  # a gentle sway
            if -w / 2 < cx < WIDTH + w / 2 and -h / 2 < cy < HEIGHT + h / 2:  # (partly) in the picture
                ids.append(i + 1)
                boxes.append(_box(cx, cy, w, h))
                depth.append(d)
        order = np.argsort(depth)
        out.append(
            Truth(
                np.array(ids, dtype=np.int64)[order],
                np.array(boxes, dtype=np.float64).reshape(-1, 4)[order],
                np.array(depth)[order],
            )
        )
    return out


def _occluded(boxes: np.ndarray) -> np.ndarray:
    """How much of each box (nearest last) is covered by a nearer one, 0..1."""
    n = len(boxes)
    cover = np.zeros(n)
    for i in range(n):
        for j in range(i + 1, n):
            x1, y1 = np.maximum(boxes[i, :2], boxes[j, :2])
            x2, y2 = np.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
            area = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            cover[i] = max(cover[i], inter / area)
    return cover


def detect(
    truth: list[Truth], seed: int, miss: float = 0.08, false_per_frame: float = 1.0
) -> list[np.ndarray]:
    """A noisy detector's ``[K, 6]`` rows (x1, y1, x2, y2, score, class 0) for each frame of `truth`."""
    rng = np.random.default_rng(seed + 1000)
    out = []
    for t in truth:
        rows = []
        cover = _occluded(t.boxes)
        for box, c in zip(t.boxes, cover, strict=True):
            if rng.uniform() < miss + 0.6 * c:
                continue
            w, h = box[2] - box[0], box[3] - box[1]
            jitter = rng.normal(0, 0.04, 4) * np.array([w, h, w, h])
            score = rng.uniform(0.15, 0.5) if rng.uniform() < 0.1 + c else rng.uniform(0.6, 0.95)
            rows.append([*(box + jitter), score, 0])
        for _ in range(rng.poisson(false_per_frame)):
            w = rng.uniform(30, 100)
            cx, cy = rng.uniform(0, WIDTH), rng.uniform(0, HEIGHT)
            rows.append([*_box(cx, cy, w, w * 1.5), rng.uniform(0.1, 0.7), 0])
        out.append(np.array(rows, dtype=np.float64).reshape(-1, 6))
    return out
