"""YOLOv7 output decoding and NMS in NumPy, with the semantics of yolov7's ``non_max_suppression``.

The model output (yolov7 ``export.py --grid`` layout) is float32 ``[batch, N, 5 + nc]``: cx, cy, w, h in
model-input pixels, objectness, then `nc` class scores, sigmoid already applied. `non_max_suppression`
reproduces ``utils.general.non_max_suppression`` of WongKinYiu/yolov7 step for step, in float32 like the
PyTorch original, so boxes, scores, classes and their order come out identical:

1. candidates: objectness > ``conf_thres``;
2. scores = class scores × objectness; for a one-class model, objectness alone (yolov7's current rule:
   such a model has no class loss, so its class score is a constant 0.5);
3. cx, cy, w, h → x1, y1, x2, y2;
4. ``multi_label``: one row per (box, class) pair with score > ``conf_thres``, in row-major order (what
   ``torch.nonzero`` returns); otherwise the best class per box (first index on ties), kept when its
   score > ``conf_thres``. As in yolov7, ``multi_label`` has no effect when ``nc == 1``;
5. the class filter, if any;
6. above ``max_nms`` candidates, only the ``max_nms`` best scores go on;
7. greedy NMS like ``torchvision.ops.nms`` (CPU kernel), per class through the class-offset trick
   (boxes + class × ``max_wh``) or class-agnostic; output in descending score order;
8. at most ``max_det`` detections.

Two numeric details follow PyTorch exactly: ``tensor > conf_thres`` compares in float32 (the Python
scalar is cast to the tensor's dtype), while torchvision's CPU kernel compares the float32 IoU with the
threshold as a C++ ``double``. Boxes with NaN or infinite coordinates are not guaranteed to match.

Everything here is a pure function of its inputs; `to_source_frame` maps the result to source pixels.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from streamer.preprocess.letterbox import LetterboxGeometry

if TYPE_CHECKING:
    from streamer.config import DetectionConfig

__all__ = [
    "NmsParams",
    "box_iou",
    "detect_image",
    "nms",
    "non_max_suppression",
    "serving_nms",
    "to_source_frame",
    "xywh2xyxy",
]


@dataclass(frozen=True)
class NmsParams:
    """Parameters of `non_max_suppression`; the defaults are yolov7 ``detect.py``'s."""

    conf_thres: float = 0.25
    """Objectness and score threshold (strictly greater passes)."""
    iou_thres: float = 0.45
    """A box is suppressed by a better one when their IoU is strictly greater than this."""
    max_det: int = 300
    """At most this many detections per image (the best ones)."""
    classes: tuple[int, ...] | None = None
    """Keep only these class ids (None: all)."""
    agnostic: bool = False
    """Class-agnostic NMS: boxes of different classes suppress each other."""
    multi_label: bool = False
    """One detection per class above the threshold instead of the best class per box."""
    max_nms: int = 30000
    """At most this many candidates (the best scores) go into NMS."""
    max_wh: float = 4096.0
    """Class offset of the per-class NMS trick; must exceed any box coordinate."""

    def __post_init__(self) -> None:
        for name in ("conf_thres", "iou_thres"):
            value = getattr(self, name)
            if not (_is_number(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        for name in ("max_det", "max_nms"):
            value = getattr(self, name)
            if not (_is_int(value) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (_is_number(self.max_wh) and math.isfinite(self.max_wh) and self.max_wh > 0):
            raise ValueError(f"max_wh must be a positive number, got {self.max_wh!r}")
        if self.classes is not None and not (
            isinstance(self.classes, tuple) and all(_is_int(c) for c in self.classes)
        ):
            raise ValueError(f"classes must be a tuple of integer class ids or None, got {self.classes!r}")


def serving_nms(det: DetectionConfig) -> NmsParams:
    """The NMS the daemon applies with the config's `detection` section (its serving thresholds)."""
    return NmsParams(
        conf_thres=det.confidence, iou_thres=det.iou, max_det=det.max_detections, classes=det.class_ids,
        agnostic=det.agnostic_nms, multi_label=det.multi_label,
    )  # fmt: skip


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


_EMPTY = np.zeros((0, 6), dtype=np.float32)


def xywh2xyxy(x: np.ndarray) -> np.ndarray:
    """``[..., 4]`` cx, cy, w, h → x1, y1, x2, y2, as a new array of the same dtype (float32 stays so)."""
    x = np.asarray(x)
    if x.shape[-1:] != (4,):
        raise ValueError(f"expected boxes of shape [..., 4], got {x.shape}")
    y = np.empty_like(x)
    half_w = x[..., 2] / 2
    half_h = x[..., 3] / 2
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of x1, y1, x2, y2 boxes: ``[N, 4]`` × ``[M, 4]`` → ``[N, M]``.

    Plain areas ``(x2 - x1) * (y2 - y1)`` (no +1); two empty boxes give NaN, as in yolov7's `box_iou`.
    """
    a = _as_boxes(a, "a")
    b = _as_boxes(b, "b")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])
    np.maximum(wh, 0, out=wh)
    inter = wh[..., 0] * wh[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_thres: float, *, max_keep: int | None = None
) -> np.ndarray:
    """Greedy NMS with the semantics of ``torchvision.ops.nms`` (CPU kernel).

    Visits boxes by descending score; each box not yet suppressed is kept and suppresses every later
    box whose IoU with it is strictly greater than `iou_thres`. Returns the kept indices (int64) in
    descending score order. `max_keep` stops after that many kept boxes: the result is then the prefix
    of the full result (what yolov7 keeps with ``i[:max_det]``), at a fraction of the cost.

    Computes in the dtype of `boxes` (float32 for exact parity with torchvision on float32 tensors).
    """
    boxes = _as_boxes(boxes, "boxes")
    scores = np.asarray(scores)
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"expected {boxes.shape[0]} scores for {boxes.shape[0]} boxes, got {scores.shape}")
    n = boxes.shape[0]
    limit = n if max_keep is None else max_keep
    if n == 0 or limit <= 0:
        return np.zeros(0, dtype=np.int64)

    # Descending score, ties in index order. torchvision's sort is not guaranteed stable on exact ties
    # (neither the CPU nor the CUDA kernel asks for a stable sort), so among boxes of exactly equal score
    # the order, and with it the result, is ours; a stable sort makes it deterministic.
    order = np.argsort(-scores, kind="stable")
    return _greedy_nms(boxes, order, None, iou_thres, limit)


def _greedy_nms(
    boxes: np.ndarray, order: np.ndarray, groups: np.ndarray | None, iou_thres: float, limit: int
) -> np.ndarray:
    """torchvision's greedy loop over `boxes` visited in `order`, stopping after `limit` kept boxes.

    `groups` (one id per box), when given, promises that boxes of different groups never overlap, so
    never suppress each other: each group then keeps its own shrinking candidate set, and the global
    visiting order is kept by taking, at every step, the group whose best remaining box comes first.
    The result is the same as without `groups`; each step only scans its own group.
    """
    n = boxes.shape[0]
    if groups is None:
        parts = [order]
    else:
        g = groups[order]
        by_group = np.argsort(g, kind="stable")  # grouped, visiting order kept within each group
        parts = np.split(order[by_group], np.flatnonzero(g[by_group][1:] != g[by_group][:-1]) + 1)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    # Per group: rows x1, y1, x2, y2, area in visiting order, shrunk as boxes are kept or suppressed,
    # and the matching box indices.
    rests: list[np.ndarray] = []
    idxs: list[np.ndarray] = []
    heap: list[tuple[int, int]] = []
    for k, part in enumerate(parts):
        rest = np.empty((5, part.shape[0]), dtype=boxes.dtype)
        rest[:4] = boxes[part].T
        np.multiply(rest[2] - rest[0], rest[3] - rest[1], out=rest[4])
        rests.append(rest)
        idxs.append(part)
        heap.append((int(rank[part[0]]), k))
    heapq.heapify(heap)

    thr = _threshold_at_or_below(iou_thres, boxes.dtype)
    keep: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while heap and len(keep) < limit:
            k = heapq.heappop(heap)[1]
            rest, idx = rests[k], idxs[k]
            keep.append(int(idx[0]))
            if idx.shape[0] == 1:
                continue
            x1, y1, x2, y2, area = rest[:, 0]
            others = rest[:, 1:]
            w = np.minimum(others[2], x2) - np.maximum(others[0], x1)
            h = np.minimum(others[3], y2) - np.maximum(others[1], y1)
            np.maximum(w, 0, out=w)
            np.maximum(h, 0, out=h)
            inter = w * h
            iou = inter / ((area + others[4]) - inter)  # (iarea + areas[j]) - inter, as torchvision
            survive = ~(iou > thr)  # NaN (two empty boxes) does not suppress, as in torchvision
            idx = idx[1:][survive]
            if idx.shape[0]:
                rests[k], idxs[k] = others[:, survive], idx
                heapq.heappush(heap, (int(rank[idx[0]]), k))
    return np.asarray(keep, dtype=np.int64)


def detect_image(pred_one: np.ndarray, params: NmsParams) -> np.ndarray:
    """Decode one image's output ``[N, 5 + nc]`` into detections ``[K, 6]`` float32.

    Columns x1, y1, x2, y2 (model-input pixels), score, class id; rows in descending score order.
    """
    _check_pred(pred_one, 2)
    return _detect(pred_one, params)


def non_max_suppression(pred: np.ndarray, params: NmsParams) -> list[np.ndarray]:
    """Decode a batch ``[B, N, 5 + nc]`` into B float32 arrays ``[K, 6]`` (see `detect_image`)."""
    _check_pred(pred, 3)
    return [_detect(pred_one, params) for pred_one in pred]


def to_source_frame(dets: np.ndarray, geometry: LetterboxGeometry) -> np.ndarray:
    """Map ``[K, 6]`` detections to source-frame pixels (clipped to the frame) with `geometry.to_source`.

    Returns a new float32 array; score and class columns are copied unchanged.
    """
    dets = np.asarray(dets)
    if dets.ndim != 2 or dets.shape[1] != 6:
        raise ValueError(f"expected detections of shape [K, 6], got {dets.shape}")
    out = dets.astype(np.float32, copy=True)
    out[:, :4] = geometry.to_source(out[:, :4])
    return out


def _detect(x: np.ndarray, params: NmsParams) -> np.ndarray:
    nc = x.shape[1] - 5
    conf = np.float32(params.conf_thres)  # torch compares a float32 tensor with a scalar in float32
    x = x.take(np.flatnonzero(x[:, 4] > conf), axis=0)  # 1. candidates by objectness (take: faster)
    if x.shape[0] == 0:
        return _EMPTY.copy()
    # 2. score = class score × objectness (float32); a one-class model scores by objectness alone, as
    # yolov7 does since commit be1109c (its class score is a constant 0.5 for lack of a class loss)
    scores = x[:, 4:5].copy() if nc == 1 else x[:, 5:] * x[:, 4:5]
    box = xywh2xyxy(x[:, :4])  # 3.

    if params.multi_label and nc > 1:  # 4. every (box, class) pair above the threshold, row-major
        i, cls = np.nonzero(scores > conf)
        box, score = box[i], scores[i, cls]
    else:  # best class only; argmax takes the first index on ties, as torch.max(dim) does
        cls = scores.argmax(axis=1)
        score = scores[np.arange(scores.shape[0]), cls]
        ok = score > conf
        box, score, cls = box[ok], score[ok], cls[ok]

    if params.classes is not None:  # 5.
        ok = np.isin(cls, np.asarray(params.classes, dtype=np.int64))
        box, score, cls = box[ok], score[ok], cls[ok]

    if score.shape[0] == 0:
        return _EMPTY.copy()
    if score.shape[0] > params.max_nms:  # 6. the best max_nms by score (stable, see nms)
        top = np.argsort(-score, kind="stable")[: params.max_nms]
        box, score, cls = box[top], score[top], cls[top]

    # 7. per-class NMS: boxes + class × max_wh, rounded to float32 like the PyTorch original
    cls_f = cls.astype(np.float32)
    if params.agnostic:
        nms_boxes, groups = box, None
    else:
        nms_boxes = box + (cls_f * np.float32(params.max_wh))[:, None]
        groups = cls if _classes_apart(nms_boxes, cls) else None
    order = np.argsort(-score, kind="stable")  # see nms
    keep = _greedy_nms(nms_boxes, order, groups, params.iou_thres, params.max_det)  # 8. early stop

    out = np.empty((keep.shape[0], 6), dtype=np.float32)
    out[:, :4] = box[keep]
    out[:, 4] = score[keep]
    out[:, 5] = cls_f[keep]
    return out


def _classes_apart(nms_boxes: np.ndarray, cls: np.ndarray) -> bool:
    """Whether the class offsets left no x-overlap between boxes of different classes.

    Then a box can only suppress boxes of its own class, and NMS may run class by class (an exact
    shortcut, checked on the offset float32 coordinates themselves). Boxes wider than ``max_wh`` or
    non-finite coordinates fail the check, and NMS then runs over all boxes at once, as yolov7 does.
    """
    by_class = np.argsort(cls, kind="stable")
    c = cls[by_class]
    starts = np.flatnonzero(np.concatenate(([True], c[1:] != c[:-1])))
    if starts.shape[0] == 1:
        return True
    lo = np.minimum.reduceat(nms_boxes[by_class, 0], starts)
    hi = np.maximum.reduceat(nms_boxes[by_class, 2], starts)
    # Offsets grow with the class id: every class must end before any later class begins.
    later_lo = np.minimum.accumulate(lo[::-1])[::-1][1:]
    return bool(np.all(hi[:-1] <= later_lo))


def _check_pred(pred: np.ndarray, ndim: int) -> None:
    layout = "[N, 5 + nc]" if ndim == 2 else "[batch, N, 5 + nc]"
    if not isinstance(pred, np.ndarray):
        raise ValueError(f"expected a NumPy array {layout}, got {type(pred).__name__}")
    if pred.ndim != ndim or pred.shape[-1] < 6:
        raise ValueError(f"expected a model output of shape {layout} with nc >= 1, got {pred.shape}")
    if pred.dtype != np.float32:
        raise ValueError(
            f"expected a float32 model output, got {pred.dtype} (convert with .astype(np.float32))"
        )


def _as_boxes(boxes: np.ndarray, name: str) -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"expected {name} of shape [N, 4] (x1, y1, x2, y2), got {boxes.shape}")
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float32)
    return boxes


def _threshold_at_or_below(threshold: float, dtype: np.dtype) -> np.floating:
    """The largest `dtype` value ``t <= threshold``: for any `dtype` value v, ``v > t`` ⇔ ``v > threshold``.

    torchvision compares a float32 IoU with a double threshold; comparing against this value does the
    same in float32, whatever NumPy's scalar promotion rules.
    """
    t: np.floating = dtype.type(threshold)
    if float(t) > threshold:
        t = np.nextafter(t, dtype.type(-np.inf))
    return t
