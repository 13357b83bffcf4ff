"""Detections from yolov7's end-to-end exports, whose NMS ran inside the model.

Both layouts (see `streamer.engine.layout`) come out as the same per-image float32 ``[K, 6]`` arrays as
`streamer.postprocess.nms.detect_image`: x1, y1, x2, y2 (model-input pixels), score, class id, in descending
score order.

- EFFICIENT_NMS (``--end2end``, TensorRT's EfficientNMS_TRT plugin): ``num_dets [B, 1]``,
  ``det_boxes [B, K, 4]`` (corners, whatever the plugin's input box coding), ``det_scores [B, K]``,
  ``det_classes [B, K]``; only the first ``num_dets[i]`` rows of image i are valid.
- ONNX_NMS (``--end2end --max-wh``, ONNX NonMaxSuppression; yolov7's ``ONNX_ORT``): ``[M, 7]`` rows of
  batch index, x1, y1, x2, y2, class, score, for the whole batch. Rows whose batch index is not a valid
  image index (NaN padding, for instance, of a buffer larger than M rows) are ignored, so the output may
  also come as ``[B, R, 7]`` or any array of 7-column rows.

The model's own NMS already applied the thresholds baked in at export (``--conf-thres``,
``--iou-thres``, ``--topk-all``, class-aware or not by ``--max-wh``). On top, the config's
``detection.confidence`` (score strictly greater, in float32 as yolov7 compares), ``classes`` and
``max_detections`` are applied: they can only drop detections, never bring back what the model dropped.
``iou``, ``agnostic_nms`` and ``multi_label`` cannot apply at all; `baked_in_note` says which settings
are limited, for the worker to log once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from streamer.engine.device import OutputLayout, TensorSpec
from streamer.postprocess.nms import NmsParams

__all__ = ["baked_in_note", "decode_end2end", "efficient_nms_detections", "onnx_nms_detections"]

log = logging.getLogger(__name__)

_EMPTY = np.zeros((0, 6), dtype=np.float32)
_DEFAULTS = NmsParams()
_noted: set[tuple[OutputLayout, NmsParams]] = set()


def efficient_nms_detections(
    num_dets: np.ndarray,
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    det_classes: np.ndarray,
    params: NmsParams,
) -> list[np.ndarray]:
    """EfficientNMS outputs of a batch → one ``[K, 6]`` float32 array per image (see module docstring)."""
    boxes = np.asarray(det_boxes)
    batch, k = boxes.shape[:2] if boxes.ndim == 3 else (-1, -1)
    if boxes.shape != (batch, k, 4):
        raise ValueError(f"expected det_boxes of shape [B, K, 4], got {boxes.shape}")
    scores = np.asarray(det_scores, dtype=np.float32)
    classes = np.asarray(det_classes)
    counts = np.asarray(num_dets).reshape(-1)
    if scores.shape != (batch, k) or classes.shape != (batch, k) or counts.shape != (batch,):
        raise ValueError(
            f"EfficientNMS outputs disagree: num_dets {np.shape(num_dets)}, det_boxes {boxes.shape}, "
            f"det_scores {scores.shape}, det_classes {classes.shape}"
        )
    valid = np.arange(k)[None, :] < np.clip(counts, 0, k)[:, None]
    keep = valid & _passes(scores, classes, params)
    rows = np.empty((batch, k, 6), dtype=np.float32)
    rows[..., :4] = boxes
    rows[..., 4] = scores
    rows[..., 5] = classes
    return [_best(rows[i][keep[i]], params.max_det) for i in range(batch)]


def onnx_nms_detections(output: np.ndarray, batch: int, params: NmsParams) -> list[np.ndarray]:
    """ONNX-NMS rows ``[M, 7]`` (batch index, x1, y1, x2, y2, class, score) → `batch` ``[K, 6]`` arrays."""
    out = np.asarray(output)
    if out.ndim < 1 or out.shape[-1] != 7:
        raise ValueError(
            f"expected ONNX-NMS rows of 7 values (b, x1, y1, x2, y2, class, score), got {out.shape}"
        )
    rows = out.reshape(-1, 7).astype(np.float32, copy=False)
    b = rows[:, 0]
    with np.errstate(invalid="ignore"):
        in_batch = np.isfinite(b) & (b >= 0) & (b < batch) & (b == np.floor(b))
    scores, classes = rows[:, 6], rows[:, 5]
    keep = np.flatnonzero(in_batch & _passes(scores, classes, params))
    order = keep[np.lexsort((-scores[keep], b[keep]))]  # by image, then descending score (stable)
    image = b[order].astype(np.int64)
    starts = np.searchsorted(image, np.arange(batch + 1))
    top = np.arange(order.shape[0]) - starts[image] < params.max_det
    order, image = order[top], image[top]
    dets = np.empty((order.shape[0], 6), dtype=np.float32)
    dets[:, :4] = rows[order, 1:5]
    dets[:, 4] = scores[order]
    dets[:, 5] = classes[order]
    bounds = np.searchsorted(image, np.arange(batch + 1))
    return [dets[bounds[i] : bounds[i + 1]] for i in range(batch)]


def decode_end2end(
    layout: OutputLayout,
    specs: Sequence[TensorSpec],
    outputs: Mapping[str, np.ndarray],
    batch: int,
    params: NmsParams,
) -> list[np.ndarray]:
    """Detections of a batch for an end-to-end `layout`, its outputs named as in `specs` (layout order).

    The first call for a (layout, params) pair logs `baked_in_note` once.
    """
    if (layout, params) not in _noted:
        _noted.add((layout, params))
        note = baked_in_note(layout, params)
        if note:
            log.info("%s", note)
    if layout is OutputLayout.EFFICIENT_NMS:
        num, boxes, scores, classes = (outputs[s.name][:batch] for s in specs)
        return efficient_nms_detections(num, boxes, scores, classes, params)
    if layout is OutputLayout.ONNX_NMS:
        return onnx_nms_detections(outputs[specs[0].name], batch, params)
    raise ValueError(f"{layout.value!r} is not an end-to-end layout: decode it with streamer.postprocess.nms")


def baked_in_note(layout: OutputLayout, params: NmsParams) -> str | None:
    """What the config cannot change for a model whose NMS ran inside it, or None for `GRID`."""
    if layout is OutputLayout.GRID:
        return None
    ignored = [
        name
        for name, value, default in (
            ("detection.iou", params.iou_thres, _DEFAULTS.iou_thres),
            ("detection.agnostic_nms", params.agnostic, _DEFAULTS.agnostic),
            ("detection.multi_label", params.multi_label, _DEFAULTS.multi_label),
        )
        if value != default
    ]
    note = (
        f"the model's output layout is {layout.value}: NMS ran inside the model with the thresholds set "
        "at export; detection.confidence, classes and max_detections can only drop more detections"
    )
    if ignored:
        note += f"; {', '.join(ignored)} cannot apply and are ignored"
    return note


def _passes(scores: np.ndarray, classes: np.ndarray, params: NmsParams) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        ok = scores > np.float32(params.conf_thres)  # float32 comparison, as yolov7's
    if params.classes is not None:
        ok &= np.isin(classes, np.asarray(params.classes, dtype=np.float64))
    return ok


def _best(dets: np.ndarray, max_det: int) -> np.ndarray:
    if dets.shape[0] == 0:
        return _EMPTY.copy()
    order = np.argsort(-dets[:, 4], kind="stable")[:max_det]
    return dets[order]
