"""The pictures of `yolostream parity`'s report (`streamer.accuracy.parity_report`): a disagreeing frame
with both backends' detections side by side, and a histogram of the matched detections' score differences.

Drawn with OpenCV (already a dependency), so the report needs nothing more than the daemon does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from streamer.accuracy.parity_compare import FrameDiff, PairResult

__all__ = ["FRAMES_DIR", "HISTOGRAM", "draw_frame", "draw_histogram", "frame_picture_path"]

HISTOGRAM = "score_delta_hist.png"
FRAMES_DIR = "frames"

_GREEN = (60, 200, 60)
_RED = (40, 40, 230)  # BGR: OpenCV writes BGR images
_ORANGE = (0, 160, 255)
_WHITE = (255, 255, 255)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def frame_picture_path(out_dir: Path, pair: PairResult, frame: FrameDiff) -> Path:
    return out_dir / FRAMES_DIR / f"{_safe(pair.candidate)}__{_safe(Path(frame.name).stem)}.jpg"


def _label(
    image: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int], scale: float
) -> None:
    thickness = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = org
    y = max(y, th + base)
    cv2.rectangle(image, (x, y - th - base), (x + tw, y), colour, -1)
    cv2.putText(
        image, text, (x, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA
    )


def _draw_side(
    rgb: np.ndarray, dets: np.ndarray, bad: set[int], title: str, names: Sequence[str]
) -> np.ndarray:
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    scale = max(0.4, min(image.shape[:2]) / 900)
    for k, (x1, y1, x2, y2, _, _) in enumerate(dets.tolist()):  # agreeing boxes: thin, no label
        if k not in bad:
            cv2.rectangle(image, (round(x1), round(y1)), (round(x2), round(y2)), _GREEN, max(1, round(scale)))
    for k in sorted(bad):  # on top: the boxes that disagree, with class and score
        x1, y1, x2, y2, score, cls = dets[k].tolist()
        cv2.rectangle(image, (round(x1), round(y1)), (round(x2), round(y2)), _RED, max(2, round(scale * 3)))
        name = names[int(cls)] if int(cls) < len(names) else str(int(cls))
        _label(image, f"{name} {score:.3f}", (round(x1), round(y1)), _RED, scale * 0.8)
    _label(image, title, (0, 0), _WHITE, scale * 1.2)
    return image


def draw_frame(
    out_dir: Path, rgb: np.ndarray, frame: FrameDiff, pair: PairResult, names: Sequence[str]
) -> Path:
    """Both backends' detections side by side: agreeing boxes thin green, the others (unmatched, or matched
    at IoU < 0.99) thick red with class and score."""
    loose = frame.loose_pairs()
    bad_a = set(frame.only_a) | {i for i, _, _ in loose}
    bad_b = set(frame.only_b) | {j for _, j, _ in loose}
    left = _draw_side(rgb, frame.dets_a, bad_a, f"A: {pair.reference}", names)
    right = _draw_side(rgb, frame.dets_b, bad_b, f"B: {pair.candidate}", names)
    gap = np.full((left.shape[0], 8, 3), 255, np.uint8)
    path = frame_picture_path(out_dir, pair, frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.hstack([left, gap, right]), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return path


def draw_histogram(path: Path, pairs: Sequence[PairResult]) -> Path:
    """Histogram of score(b) − score(a) of matched detections, one panel per compared pair."""
    panel_w, panel_h, margin = 720, 300, 50
    canvas = np.full((panel_h * max(1, len(pairs)), panel_w, 3), 255, np.uint8)
    for k, pair in enumerate(pairs):
        top = k * panel_h
        deltas = pair.score_deltas()
        title = f"score(B) - score(A), matched detections: {pair.candidate} vs {pair.reference}"
        cv2.putText(canvas, title, (10, top + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        x0, x1, y0, y1 = margin, panel_w - 20, top + panel_h - margin, top + 40
        cv2.line(canvas, (x0, y0), (x1, y0), (0, 0, 0), 1)
        cv2.line(canvas, (x0, y0), (x0, y1), (0, 0, 0), 1)
        if deltas.size == 0:
            cv2.putText(canvas, "no matched detections", (x0 + 10, (y0 + y1) // 2),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)  # fmt: skip
            continue
        span = float(np.abs(deltas).max())
        span = span if span > 0 else 1e-7
        bins = 41
        counts, _ = np.histogram(deltas, bins=bins, range=(-span, span))
        peak = max(int(counts.max()), 1)
        width = (x1 - x0) / bins
        for b, c in enumerate(counts):
            if c:
                h = (y0 - y1) * c / peak
                cv2.rectangle(canvas, (round(x0 + b * width + 1), round(y0 - h)),
                              (round(x0 + (b + 1) * width - 1), y0 - 1), (200, 120, 40), -1)  # fmt: skip
        for value, x in ((-span, x0), (0.0, (x0 + x1) // 2), (span, x1)):
            text = f"{value:+.2e}" if value else "0"
            (tw, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
            tx = min(max(round(x - tw / 2), 0), panel_w - tw - 2)
            cv2.putText(canvas, text, (tx, y0 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        stats = f"n={deltas.size}  mean={deltas.mean():+.2e}  max|d|={span:.2e}  peak bin={peak}"
        cv2.putText(canvas, stats, (x0, y0 + 38), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), canvas)
    return path
