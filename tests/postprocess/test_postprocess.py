"""`streamer.postprocess.nms` against hand-built cases and a loop-based transliteration of yolov7's NMS."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from streamer.postprocess.nms import (
    NmsParams,
    _classes_apart,
    box_iou,
    detect_image,
    nms,
    non_max_suppression,
    to_source_frame,
    xywh2xyxy,
)
from streamer.preprocess.letterbox import letterbox, letterbox_geometry, to_input_tensor

SHARED = Path(__file__).resolve().parents[3] / "shared"
MODEL = SHARED / "models" / "yolov5s-coco.onnx"
IMAGES = SHARED / "data" / "tinycoco" / "images" / "val2017"

# --- reference: yolov7's utils.general.non_max_suppression + torchvision.ops.nms, in plain Python -------
#
# PyTorch computes in float32: every arithmetic result below is rounded to float32 with `f32` (exact,
# since double has more than 2 × 24 + 2 bits: rounding a double result of +, -, ×, / of float32 values
# to float32 is the correctly rounded float32 result). `tensor > python_float` compares in float32 (the
# scalar takes the tensor's dtype), while torchvision's CPU kernel compares a float32 IoU with a double
# threshold. Sorting uses Python's stable sort (ties in index order), like the implementation under test.
# (Checked once against real yolov7 code on torch 2.11 + torchvision 0.26, CPU and CUDA: identical on
# 3000 random cases and real outputs, except where exact score ties meet torch's unstable sort.)

_F32 = struct.Struct("<f")


def f32(v: float) -> float:
    return _F32.unpack(_F32.pack(v))[0]


REF_STATS = {"suppressed": 0}


def ref_torchvision_nms(
    boxes: list[list[float]], scores: list[float], iou_threshold: float, max_keep: int
) -> list[int]:
    """torchvision/csrc/ops/cpu/nms_kernel.cpp, line by line.

    Two shortcuts that cannot change the result, to keep real-model cases fast: stop once `max_keep`
    boxes are kept (later iterations only append to `keep`, which yolov7 truncates to max_det), and skip
    pairs that do not overlap in x (w = 0, so IoU is 0 or NaN, never > a threshold >= 0).
    """
    ndets = len(boxes)
    areas = [f32(f32(b[2] - b[0]) * f32(b[3] - b[1])) for b in boxes]
    order = sorted(range(ndets), key=lambda k: scores[k], reverse=True)  # stable
    suppressed = [False] * ndets
    keep: list[int] = []
    for _i in range(ndets):
        i = order[_i]
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == max_keep:
            break
        ix1, iy1, ix2, iy2 = boxes[i]
        iarea = areas[i]
        for _j in range(_i + 1, ndets):
            j = order[_j]
            if suppressed[j]:
                continue
            xx1 = max(ix1, boxes[j][0])
            xx2 = min(ix2, boxes[j][2])
            if xx2 <= xx1:
                continue
            yy1 = max(iy1, boxes[j][1])
            yy2 = min(iy2, boxes[j][3])
            w = max(0.0, f32(xx2 - xx1))
            h = max(0.0, f32(yy2 - yy1))
            inter = f32(w * h)
            union = f32(f32(iarea + areas[j]) - inter)
            if union == 0.0:
                ovr = math.nan if inter == 0.0 else math.copysign(math.inf, inter)
            else:
                ovr = f32(inter / union)
            if ovr > iou_threshold:  # float vs double, as in C++
                suppressed[j] = True
                REF_STATS["suppressed"] += 1
    return keep


def ref_non_max_suppression(
    prediction: np.ndarray,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: tuple[int, ...] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
    max_wh: float = 4096.0,
) -> list[list[tuple[float, ...]]]:
    """yolov7's non_max_suppression (labels=(), merge=False) transliterated to lists and loops."""
    nc = prediction.shape[2] - 5
    conf32 = f32(conf_thres)  # `tensor > conf_thres` compares in float32
    multi_label = multi_label and nc > 1
    output: list[list[tuple[float, ...]]] = []
    for x in prediction.tolist():  # image index, image inference (floats are exact float32 values)
        x = [row for row in x if row[4] > conf32]  # confidence
        if not x:
            output.append([])
            continue
        # Compute conf, box (center x, center y, width, height) to (x1, y1, x2, y2)
        rows = []
        for row in x:
            cx, cy, w, h, obj = row[:5]
            # yolov7 (since be1109c): a one-class model scores by objectness alone
            conf = [obj] if nc == 1 else [f32(c * obj) for c in row[5:]]
            box = [f32(cx - f32(w / 2)), f32(cy - f32(h / 2)), f32(cx + f32(w / 2)), f32(cy + f32(h / 2))]
            rows.append((box, conf))
        dets: list[tuple[list[float], float, int]] = []
        if multi_label:
            for box, conf in rows:  # nonzero(): row-major
                for j in range(nc):
                    if conf[j] > conf32:
                        dets.append((box, conf[j], j))
        else:  # best class only, first index on ties
            for box, conf in rows:
                best = 0
                for j in range(1, nc):
                    if conf[j] > conf[best]:
                        best = j
                if conf[best] > conf32:
                    dets.append((box, conf[best], best))
        if classes is not None:
            dets = [d for d in dets if float(d[2]) in [float(c) for c in classes]]
        if not dets:
            output.append([])
            continue
        if len(dets) > max_nms:  # sort by confidence
            dets = sorted(dets, key=lambda d: d[1], reverse=True)[:max_nms]
        # Batched NMS: boxes offset by class × max_wh (float32)
        boxes = []
        for box, _, cls in dets:
            c = 0.0 if agnostic else f32(float(cls) * max_wh)
            boxes.append([f32(v + c) for v in box])
        keep = ref_torchvision_nms(boxes, [d[1] for d in dets], iou_thres, max_keep=max_det)
        output.append([(*dets[k][0], dets[k][1], float(dets[k][2])) for k in keep])
    return output


def as_array(ref: list[tuple[float, ...]]) -> np.ndarray:
    return np.array(ref, dtype=np.float32).reshape(-1, 6)


# --- helpers to build outputs by hand ------------------------------------------------------------------


def row(x1: float, y1: float, x2: float, y2: float, obj: float, *cls: float) -> list[float]:
    """One output row from an x1, y1, x2, y2 box (chosen so that the xywh round trip is exact)."""
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, obj, *cls]


def pred(*rows: list[float]) -> np.ndarray:
    """Rows with a single class score get a second, zero one: the score is then class × objectness, as
    for any real multi-class model (one-class models score by objectness alone; tested apart)."""
    rows = tuple([*r, 0.0] if len(r) == 6 else r for r in rows)
    return np.array(rows, dtype=np.float32).reshape(len(rows), -1)


def run(p: np.ndarray, **kw: object) -> np.ndarray:
    return detect_image(p, NmsParams(**kw))  # type: ignore[arg-type]


# --- hand-built cases -----------------------------------------------------------------------------------


def test_a_one_class_model_scores_by_objectness_alone() -> None:
    # yolov7 since be1109c: `if nc == 1: x[:, 5:] = x[:, 4:5]` (a one-class model learns no class score)
    p = np.array([row(0, 0, 10, 10, 0.8, 0.5), row(100, 0, 110, 10, 0.3, 0.9)], dtype=np.float32)
    out = run(p)
    np.testing.assert_array_equal(out[:, 4], np.float32([0.8, 0.3]))
    np.testing.assert_array_equal(out[:, 5], [0, 0])


def test_objectness_prefilter() -> None:
    p = pred(
        row(0, 0, 10, 10, 0.2, 1.0),  # obj 0.2: dropped before scoring although class is 1.0
        row(100, 0, 110, 10, 0.3, 0.9),  # 0.27: kept
        row(200, 0, 210, 10, 0.5, 0.4),  # obj passes, score 0.2 does not
        row(300, 0, 310, 10, 0.25, 1.0),  # obj == conf: not > conf
    )
    out = run(p, conf_thres=0.25)
    np.testing.assert_array_equal(out, [[100, 0, 110, 10, np.float32(0.3) * np.float32(0.9), 0]])


def test_score_is_class_times_objectness_in_float32() -> None:
    p = pred(row(0, 0, 10, 10, 0.8, 0.1, 0.9, 0.3))
    out = run(p)
    assert out.dtype == np.float32
    assert out.shape == (1, 6)
    assert out[0, 4] == np.float32(0.8) * np.float32(0.9)
    assert out[0, 5] == 1.0
    np.testing.assert_array_equal(out[0, :4], [0, 0, 10, 10])


def test_iou_exactly_at_the_threshold_is_kept_and_just_above_is_suppressed() -> None:
    a = row(0, 0, 10, 10, 0.9, 1.0)
    at = row(0, 0, 10, 5, 0.8, 1.0)  # IoU 50 / 100 = 0.5 exactly
    above = row(0, 0, 10, 5.25, 0.8, 1.0)  # IoU 0.525
    assert len(run(pred(a, at), iou_thres=0.5)) == 2
    assert len(run(pred(a, above), iou_thres=0.5)) == 1
    assert len(run(pred(a, at), iou_thres=0.4999)) == 1


def test_iou_is_compared_with_the_threshold_in_double_like_torchvision_cpu() -> None:
    # IoU 30 / 100 is float32(0.3) = 0.30000001192..., which is > 0.3 as a double: torchvision's CPU
    # kernel suppresses it (a float32 comparison would not).
    a = row(0, 0, 10, 10, 0.9, 1.0)
    b = row(0, 0, 10, 3, 0.8, 1.0)
    assert len(run(pred(a, b), iou_thres=0.3)) == 1
    assert len(run(pred(a, b), iou_thres=0.30000002)) == 2


def test_iou_arithmetic_follows_torchvision_order() -> None:
    # torchvision: inter / ((area_i + area_j) - inter), each step rounded to float32. Find two boxes
    # where another order of the same operations rounds differently, and put the threshold between.
    rng = np.random.default_rng(3)
    a = np.sort(rng.uniform(0, 100, (10000, 2, 2)).astype(np.float32), axis=2)  # [pair, axis, lo/hi]
    b = np.sort(rng.uniform(0, 100, (10000, 2, 2)).astype(np.float32), axis=2)
    area_a = (a[:, 0, 1] - a[:, 0, 0]) * (a[:, 1, 1] - a[:, 1, 0])
    area_b = (b[:, 0, 1] - b[:, 0, 0]) * (b[:, 1, 1] - b[:, 1, 0])
    wh = np.maximum(np.minimum(a[:, :, 1], b[:, :, 1]) - np.maximum(a[:, :, 0], b[:, :, 0]), 0)
    inter = wh[:, 0] * wh[:, 1]
    torchvision_iou = inter / ((area_a + area_b) - inter)
    other_iou = inter / (area_a + (area_b - inter))
    k = int(np.flatnonzero((torchvision_iou != other_iou) & (inter > 0))[0])
    boxes = np.array([a[k].T.ravel(), b[k].T.ravel()], dtype=np.float32)  # x1, y1, x2, y2
    assert box_iou(boxes[:1], boxes[1:])[0, 0] == torchvision_iou[k]
    scores = np.array([0.9, 0.8], dtype=np.float32)
    threshold = float(min(torchvision_iou[k], other_iou[k]))
    expected_kept = 2 if torchvision_iou[k] <= threshold else 1
    assert len(nms(boxes, scores, threshold)) == expected_kept


def test_objectness_and_scores_are_compared_with_conf_thres_in_float32() -> None:
    # torch casts the Python scalar to the tensor's dtype: float32(0.3) > 0.3 is False there, although
    # the float32 value 0.30000001192... is greater than the double 0.3.
    at = float(np.float32(0.3))
    above = float(np.nextafter(np.float32(0.3), np.float32(1)))
    assert run(pred(row(0, 0, 10, 10, at, 1.0)), conf_thres=0.3).shape == (0, 6)
    assert run(pred(row(0, 0, 10, 10, above, 1.0)), conf_thres=0.3).shape == (1, 6)
    assert run(pred(row(0, 0, 10, 10, 1.0, at)), conf_thres=0.3).shape == (0, 6)
    assert run(pred(row(0, 0, 10, 10, 1.0, at, 0.1)), conf_thres=0.3, multi_label=True).shape == (0, 6)


def test_per_class_nms_keeps_overlapping_boxes_of_different_classes_agnostic_does_not() -> None:
    p = pred(
        row(0, 0, 10, 10, 0.9, 1.0, 0.0),  # class 0
        row(1, 1, 10, 10, 0.8, 0.0, 1.0),  # class 1, IoU 0.81
        row(0, 0, 10, 9, 0.7, 1.0, 0.0),  # class 0, IoU 0.9 with the first: suppressed
    )
    per_class = run(p)
    np.testing.assert_array_equal(per_class[:, 5], [0, 1])
    np.testing.assert_array_equal(per_class[:, :4], [[0, 0, 10, 10], [1, 1, 10, 10]])
    agnostic = run(p, agnostic=True)
    np.testing.assert_array_equal(agnostic[:, :4], [[0, 0, 10, 10]])


def test_multi_label_emits_one_row_per_class_above_threshold() -> None:
    p = pred(
        row(0, 0, 10, 10, 1.0, 0.9, 0.5, 0.1),
        row(100, 100, 120, 120, 0.5, 0.6, 0.2, 0.8),
    )
    out = run(p, multi_label=True)
    expected = [
        [0, 0, 10, 10, 0.9, 0],
        [0, 0, 10, 10, 0.5, 1],
        [100, 100, 120, 120, np.float32(0.5) * np.float32(0.8), 2],
        [100, 100, 120, 120, np.float32(0.5) * np.float32(0.6), 0],
    ]
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.float32))
    best_only = run(p)
    np.testing.assert_array_equal(best_only[:, 5], [0, 2])


def test_class_filter() -> None:
    p = pred(
        row(0, 0, 10, 10, 1.0, 0.9, 0.1, 0.1),
        row(20, 0, 30, 10, 1.0, 0.1, 0.8, 0.1),
        row(40, 0, 50, 10, 1.0, 0.1, 0.1, 0.7),
    )
    np.testing.assert_array_equal(run(p, classes=(1,))[:, 5], [1])
    np.testing.assert_array_equal(run(p, classes=(2, 0))[:, 5], [0, 2])
    assert run(p, classes=(5,)).shape == (0, 6)
    # The filter applies to the best class only (yolov7 filters after picking it).
    assert run(pred(row(0, 0, 10, 10, 1.0, 0.9, 0.8)), classes=(1,)).shape == (0, 6)
    assert len(run(pred(row(0, 0, 10, 10, 1.0, 0.9, 0.8)), classes=(1,), multi_label=True)) == 1


def test_max_det_keeps_the_best() -> None:
    scores = [0.3, 0.9, 0.5, 0.7, 0.6]
    p = pred(*[row(20 * i, 0, 20 * i + 10, 10, 1.0, s) for i, s in enumerate(scores)])
    out = run(p, max_det=3)
    np.testing.assert_array_equal(out[:, 4], np.float32([0.9, 0.7, 0.6]))
    np.testing.assert_array_equal(out[:, 0], [20, 60, 80])


def test_max_nms_keeps_the_best_candidates_before_nms() -> None:
    scores = [0.5, 0.9, 0.7]
    p = pred(*[row(20 * i, 0, 20 * i + 10, 10, 1.0, s) for i, s in enumerate(scores)])
    np.testing.assert_array_equal(run(p)[:, 4], np.float32([0.9, 0.7, 0.5]))
    np.testing.assert_array_equal(run(p, max_nms=2)[:, 4], np.float32([0.9, 0.7]))
    np.testing.assert_array_equal(run(p, max_nms=1)[:, 4], np.float32([0.9]))


def test_output_in_descending_score_order() -> None:
    scores = [0.31, 0.99, 0.42, 0.87, 0.55, 0.76, 0.64]
    p = pred(*[row(20 * i, 0, 20 * i + 10, 10, 1.0, s) for i, s in enumerate(scores)])
    out = run(p)
    np.testing.assert_array_equal(out[:, 4], np.float32(sorted(scores, reverse=True)))


def test_equal_scores_keep_index_order() -> None:
    p = pred(*[row(20 * i, 0, 20 * i + 10, 10, 1.0, 0.5) for i in range(4)])
    np.testing.assert_array_equal(run(p)[:, 0], [0, 20, 40, 60])


@pytest.mark.parametrize("shape", [(0, 85), (5, 85)])
def test_empty_input_gives_0x6(shape: tuple[int, int]) -> None:
    p = np.zeros(shape, dtype=np.float32)  # all objectness 0
    out = detect_image(p, NmsParams())
    assert out.shape == (0, 6) and out.dtype == np.float32
    assert [o.shape for o in non_max_suppression(p[None], NmsParams())] == [(0, 6)]


def test_batch_of_several_images() -> None:
    a = [row(0, 0, 10, 10, 0.9, 0.9, 0.1), row(1, 1, 10, 10, 0.8, 0.9, 0.1)]
    b = [row(0, 0, 10, 10, 0.1, 0.9, 0.1), row(1, 1, 10, 10, 0.1, 0.9, 0.1)]  # nothing
    c = [row(0, 0, 10, 10, 0.9, 0.1, 0.9), row(50, 50, 60, 60, 0.8, 0.9, 0.1)]
    batch = np.stack([pred(*a), pred(*b), pred(*c)])
    params = NmsParams()
    out = non_max_suppression(batch, params)
    assert len(out) == 3
    for got, one in zip(out, batch, strict=True):
        np.testing.assert_array_equal(got, detect_image(one, params))
    assert [len(o) for o in out] == [1, 0, 2]
    np.testing.assert_array_equal(out[2][:, 5], [1, 0])


def test_single_class_model() -> None:
    p = pred(row(0, 0, 10, 10, 0.9, 0.8), row(1, 1, 10, 10, 0.8, 0.9))
    np.testing.assert_array_equal(run(p, multi_label=True), run(p))
    assert len(run(p)) == 1


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros((10, 85), dtype=np.float64), "float32"),
        (np.zeros((10, 5), dtype=np.float32), "nc >= 1"),
        (np.zeros((2, 10, 85), dtype=np.float32), "shape"),
        ([[0.0] * 6], "NumPy array"),
    ],
)
def test_detect_image_rejects_bad_input(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        detect_image(bad, NmsParams())


def test_non_max_suppression_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        non_max_suppression(np.zeros((10, 85), dtype=np.float32), NmsParams())
    with pytest.raises(ValueError, match="float32"):
        non_max_suppression(np.zeros((1, 10, 85), dtype=np.float16), NmsParams())


@pytest.mark.parametrize(
    "kw",
    [
        {"conf_thres": 1.5},
        {"conf_thres": -0.1},
        {"iou_thres": float("nan")},
        {"max_det": 0},
        {"max_nms": 2.5},
        {"max_wh": 0.0},
        {"classes": [0, 1]},
        {"classes": (0.5,)},
    ],
)
def test_params_are_validated(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NmsParams(**kw)  # type: ignore[arg-type]


def test_xywh2xyxy_and_box_iou() -> None:
    xywh = np.array([[5, 5, 10, 10], [10, 5, 10, 10]], dtype=np.float32)
    xyxy = xywh2xyxy(xywh)
    assert xyxy.dtype == np.float32
    np.testing.assert_array_equal(xyxy, [[0, 0, 10, 10], [5, 0, 15, 10]])
    iou = box_iou(xyxy, xyxy)
    np.testing.assert_allclose(iou, [[1, 1 / 3], [1 / 3, 1]], rtol=1e-6)
    assert box_iou(xyxy, np.zeros((0, 4), np.float32)).shape == (2, 0)


def test_nms_function() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=np.float32)
    scores = np.array([0.5, 0.9, 0.4, 0.3], dtype=np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [1, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.95), [1, 0, 2, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.95, max_keep=2), [1, 0])
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
    with pytest.raises(ValueError):
        nms(boxes, scores[:2], 0.5)


# --- against the reference on random outputs --------------------------------------------------------------


def random_output(rng: np.random.Generator) -> tuple[np.ndarray, NmsParams]:
    """A random [B, N, 5 + nc] output with clusters of overlapping boxes, and random parameters."""
    b = int(rng.integers(1, 3))
    n = int(rng.integers(1, 60))
    nc = int(rng.choice([1, 2, 3, 5, 80]))
    out = np.empty((b, n, 5 + nc), dtype=np.float32)
    for img in out:
        n_obj = int(rng.integers(1, 5))
        centres = rng.uniform(0, 640, (n_obj, 2))
        sizes = rng.uniform(4, 300, (n_obj, 2))
        obj_cls = rng.integers(0, nc, n_obj)
        which = rng.integers(0, n_obj, n)
        clustered = rng.random(n) < 0.8
        jitter = rng.choice([0.02, 0.1, 0.3])
        xy = np.where(clustered[:, None], centres[which] + rng.normal(0, 1, (n, 2)) * sizes[which] * jitter,
                      rng.uniform(0, 640, (n, 2)))  # fmt: skip
        wh = np.where(clustered[:, None], sizes[which] * rng.uniform(0.8, 1.25, (n, 2)),
                      rng.uniform(2, 200, (n, 2)))  # fmt: skip
        if rng.random() < 0.3:  # integer coordinates: IoUs land exactly on round values
            xy, wh = np.round(xy), np.round(wh)
        img[:, 0:2], img[:, 2:4] = xy, wh
        img[:, 4] = rng.beta(0.7, 0.7, n)
        cls = rng.uniform(0, 1, (n, nc)) ** 3
        cls[np.arange(n), obj_cls[which]] = rng.uniform(0.3, 1, n)
        img[:, 5:] = cls
        if rng.random() < 0.4:  # coarse scores: exact ties, in the scores and between classes
            img[:, 4:] = np.round(img[:, 4:] * 8) / 8
        if rng.random() < 0.1:  # exact duplicates
            img[n // 2 :] = img[: n - n // 2]
    params = NmsParams(
        conf_thres=float(rng.choice([0.001, 0.1, 0.25, 0.5, rng.uniform(0, 0.6)])),
        iou_thres=float(rng.choice([0.3, 0.45, 0.5, 0.65, rng.uniform(0, 1)])),
        max_det=int(rng.choice([300, 300, 5, 1, int(rng.integers(1, 20))])),
        classes=None if rng.random() < 0.7 else tuple(int(c) for c in rng.choice(nc, min(nc, 2), False)),
        agnostic=bool(rng.random() < 0.3),
        multi_label=bool(rng.random() < 0.4),
        max_nms=int(rng.choice([30000, 30000, 10, 3])),
        max_wh=float(rng.choice([4096.0, 4096.0, 1000.0])),
    )
    return out, params


def ref_for(p: np.ndarray, params: NmsParams) -> list[list[tuple[float, ...]]]:
    return ref_non_max_suppression(
        p,
        conf_thres=params.conf_thres,
        iou_thres=params.iou_thres,
        classes=params.classes,
        agnostic=params.agnostic,
        multi_label=params.multi_label,
        max_det=params.max_det,
        max_nms=params.max_nms,
        max_wh=params.max_wh,
    )


def assert_same(got: list[np.ndarray], ref: list[list[tuple[float, ...]]], context: object) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        expected = as_array(r)
        assert g.dtype == np.float32 and g.shape == expected.shape, context
        # Identical boxes, scores, classes, in identical order, bit for bit.
        assert np.array_equal(g, expected), (context, g, expected)


def test_matches_reference_on_random_outputs() -> None:
    rng = np.random.default_rng(20240607)
    suppressed_before = REF_STATS["suppressed"]
    for case in range(300):
        p, params = random_output(rng)
        assert_same(non_max_suppression(p, params), ref_for(p, params), (case, params))
    assert REF_STATS["suppressed"] - suppressed_before > 1000  # the clusters really exercise NMS


def test_matches_reference_with_wide_boxes_that_defeat_the_class_offset() -> None:
    # Boxes wider than max_wh overlap across classes even after the offset: NMS then runs over all.
    rng = np.random.default_rng(5)
    fallbacks = 0
    for _ in range(20):
        p = np.zeros((1, 40, 8), dtype=np.float32)
        p[0, :, 0:2] = rng.uniform(0, 100, (40, 2))
        p[0, :, 2:4] = rng.uniform(50, 400, (40, 2))
        p[0, :, 4:] = rng.uniform(0.3, 1, (40, 4))
        params = NmsParams(max_wh=100.0, iou_thres=float(rng.uniform(0.1, 0.6)), multi_label=True)
        assert_same(non_max_suppression(p, params), ref_for(p, params), params)
        boxes, cls = xywh2xyxy(p[0, :, :4]), np.arange(4)
        fallbacks += not _classes_apart(
            np.concatenate([boxes + c * np.float32(100) for c in cls]), cls.repeat(40)
        )
    assert fallbacks == 20


# --- mapping to the source frame -----------------------------------------------------------------------


@pytest.mark.parametrize(("src_w", "src_h"), [(1920, 1080), (720, 1280), (100, 50), (641, 479)])
def test_to_source_frame_round_trip(src_w: int, src_h: int) -> None:
    g = letterbox_geometry(src_w, src_h, 640, 640)
    rng = np.random.default_rng(src_w)
    xy1 = rng.uniform(0, 1, (30, 2)) * (src_w, src_h)
    xy2 = xy1 + rng.uniform(0, 1, (30, 2)) * ((src_w, src_h) - xy1)
    src_boxes = np.concatenate([xy1, xy2], axis=1).astype(np.float32)
    dets = np.empty((30, 6), dtype=np.float32)
    dets[:, :4] = g.to_input(src_boxes)
    dets[:, 4] = rng.uniform(0, 1, 30)
    dets[:, 5] = rng.integers(0, 80, 30)
    before = dets.copy()

    out = to_source_frame(dets, g)

    np.testing.assert_array_equal(dets, before)  # input untouched
    assert out.dtype == np.float32 and out.shape == (30, 6)
    np.testing.assert_allclose(out[:, :4], src_boxes, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(out[:, 4:], dets[:, 4:])


def test_to_source_frame_clips_at_frame_edges() -> None:
    g = letterbox_geometry(1280, 720, 640, 640)  # the frame is 640 × 360 at top 140 in the input
    dets = np.array(
        [
            [-5, 100, 30, 200, 0.9, 3],  # left of the frame and in the top padding
            [600, 450, 700, 520, 0.8, 7],  # right of the frame and in the bottom padding
        ],
        dtype=np.float32,
    )
    out = to_source_frame(dets, g)
    np.testing.assert_allclose(out[0, :4], [0, 0, 60, 120], atol=1e-4)
    np.testing.assert_allclose(out[1, :4], [1200, 620, 1280, 720], atol=1e-4)
    np.testing.assert_array_equal(out[:, 4:], dets[:, 4:])
    assert to_source_frame(np.zeros((0, 6), np.float32), g).shape == (0, 6)
    with pytest.raises(ValueError, match=r"\[K, 6\]"):
        to_source_frame(np.zeros((3, 4), np.float32), g)


# --- a real model -------------------------------------------------------------------------------------


def test_real_model_output_matches_reference() -> None:
    if not MODEL.is_file():
        pytest.skip(f"../shared/models/yolov5s-coco.onnx not found: no real model to check against ({MODEL})")
    # The image with the fewest candidates at conf 0.001 (about 1650), to keep the loop-based reference
    # quick; any other one if the data set changes.
    images = [IMAGES / "000000565004.jpg"] if (IMAGES / "000000565004.jpg").is_file() else []
    images += sorted(IMAGES.glob("*.jpg"))
    if not images:
        pytest.skip(f"../shared/data/tinycoco/images/val2017 has no images ({IMAGES})")
    cv2 = pytest.importorskip("cv2")
    ort = pytest.importorskip("onnxruntime")

    bgr = cv2.imread(str(images[0]))
    assert bgr is not None, images[0]
    padded, geometry = letterbox(bgr, 640, 640)
    tensor = to_input_tensor(padded, swap_rb=True)[None]
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: tensor})
    assert output.shape == (1, 25200, 85) and output.dtype == np.float32

    for params in (
        NmsParams(conf_thres=0.001, iou_thres=0.65, multi_label=True),  # yolov7 test.py
        NmsParams(conf_thres=0.001, iou_thres=0.65),
        NmsParams(conf_thres=0.25, iou_thres=0.45),  # yolov7 detect.py
    ):
        got = non_max_suppression(output, params)
        assert_same(got, ref_for(output, params), params)
    dets = non_max_suppression(output, NmsParams())[0]
    assert len(dets) >= 1 and dets[0, 4] > 0.5, dets[:5]
    in_frame = to_source_frame(dets, geometry)
    assert np.all(in_frame[:, [0, 2]] <= bgr.shape[1]) and np.all(in_frame[:, [1, 3]] <= bgr.shape[0])
    assert np.all(in_frame[:, 2] > in_frame[:, 0]) and np.all(in_frame[:, 3] > in_frame[:, 1])
