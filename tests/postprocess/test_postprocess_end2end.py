"""Detections from the end-to-end layouts: EfficientNMS outputs and ONNX-NMS rows → per-image [K, 6].

The ONNX-NMS column order and box format are checked against the real thing: a graph built like yolov7's
``ONNX_ORT`` end-to-end head (``models/experimental.py``), run by ONNX Runtime, must give what
`streamer.postprocess.nms.detect_image` gives on the same raw predictions.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamer.engine.device import OutputLayout, TensorSpec
from streamer.postprocess.end2end import (
    baked_in_note,
    decode_end2end,
    efficient_nms_detections,
    onnx_nms_detections,
)
from streamer.postprocess.nms import NmsParams, detect_image

# ------------------------------------------------------------------------------------------ EfficientNMS


def _efficient(batch: int = 2, k: int = 6, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 500, (batch, k, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 80, (batch, k, 2)).astype(np.float32)], axis=2)
    scores = np.sort(rng.uniform(0.05, 1.0, (batch, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    classes = rng.integers(0, 5, (batch, k)).astype(np.int32)
    num = rng.integers(0, k + 1, (batch, 1)).astype(np.int32)
    return num, boxes, scores, classes


def _efficient_reference(num, boxes, scores, classes, params: NmsParams) -> list[np.ndarray]:
    """Row-by-row transliteration of what efficient_nms_detections promises."""
    result = []
    for i in range(boxes.shape[0]):
        rows = []
        for j in range(min(max(int(num[i, 0]), 0), boxes.shape[1])):
            if not np.float32(scores[i, j]) > np.float32(params.conf_thres):
                continue
            if params.classes is not None and int(classes[i, j]) not in params.classes:
                continue
            rows.append([*boxes[i, j], scores[i, j], classes[i, j]])
        rows.sort(key=lambda r: -r[4])  # stable: ties keep the plugin's order
        result.append(np.asarray(rows[: params.max_det], np.float32).reshape(-1, 6))
    return result


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(
    "params",
    [NmsParams(), NmsParams(conf_thres=0.5), NmsParams(classes=(1, 3)), NmsParams(conf_thres=0.1, max_det=2)],
)
def test_efficient_nms_matches_the_row_by_row_reference(seed: int, params: NmsParams) -> None:
    outputs = _efficient(batch=3, k=8, seed=seed)
    got = efficient_nms_detections(*outputs, params)
    want = _efficient_reference(*outputs, params)
    assert len(got) == 3
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, w)


def test_efficient_nms_only_the_first_num_dets_rows_count() -> None:
    boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    scores = np.array([[0.9, 0.8, 0.7], [0.95, 0.9, 0.85]], np.float32)
    classes = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    dets = efficient_nms_detections(np.array([[2], [0]], np.int32), boxes, scores, classes, NmsParams())
    np.testing.assert_array_equal(
        dets[0], [[0, 1, 2, 3, np.float32(0.9), 1], [4, 5, 6, 7, np.float32(0.8), 2]]
    )
    assert dets[1].shape == (0, 6)


def test_efficient_nms_confidence_is_strictly_greater_in_float32() -> None:
    boxes = np.zeros((1, 2, 4), np.float32)
    scores = np.array([[np.float32(0.3), np.nextafter(np.float32(0.3), np.float32(1))]], np.float32)
    dets = efficient_nms_detections(
        np.array([[2]]), boxes, scores, np.zeros((1, 2), np.int32), NmsParams(0.3)
    )
    assert dets[0][:, 4].tolist() == [scores[0, 1]]


def test_efficient_nms_accepts_fp16_outputs() -> None:
    num, boxes, scores, classes = _efficient(seed=3)
    num[:] = 6
    got = efficient_nms_detections(
        num, boxes.astype(np.float16), scores.astype(np.float16), classes, NmsParams()
    )
    rounded = (boxes.astype(np.float16).astype(np.float32), scores.astype(np.float16).astype(np.float32))
    want = efficient_nms_detections(num, *rounded, classes, NmsParams())
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, w)


def test_efficient_nms_rejects_mismatched_shapes() -> None:
    num, boxes, scores, classes = _efficient()
    with pytest.raises(ValueError, match="disagree"):
        efficient_nms_detections(num, boxes, scores[:, :3], classes, NmsParams())
    with pytest.raises(ValueError, match=r"\[B, K, 4\]"):
        efficient_nms_detections(num, boxes[..., :3], scores, classes, NmsParams())


# -------------------------------------------------------------------------------------------- ONNX NMS


def _row(b: float, box: tuple[float, float, float, float], cls: float, score: float) -> list[float]:
    return [b, *box, cls, score]


def test_onnx_nms_rows_are_split_per_image_and_sorted_by_score() -> None:
    rows = np.array(
        [
            _row(0, (1, 2, 3, 4), 7, 0.5),
            _row(1, (5, 6, 7, 8), 2, 0.9),
            _row(0, (9, 10, 11, 12), 3, 0.8),
            _row(2, (0, 0, 1, 1), 0, 0.3),
        ],
        np.float32,
    )
    dets = onnx_nms_detections(rows, 3, NmsParams())
    np.testing.assert_array_equal(
        dets[0], np.array([[9, 10, 11, 12, 0.8, 3], [1, 2, 3, 4, 0.5, 7]], np.float32)
    )
    np.testing.assert_array_equal(dets[1], np.array([[5, 6, 7, 8, 0.9, 2]], np.float32))
    np.testing.assert_array_equal(dets[2], np.array([[0, 0, 1, 1, 0.3, 0]], np.float32))


def test_onnx_nms_filters_confidence_classes_and_max_det_per_image() -> None:
    rng = np.random.default_rng(5)
    m, batch = 300, 4
    rows = np.empty((m, 7), np.float32)
    rows[:, 0] = rng.integers(0, batch, m)
    rows[:, 1:3] = rng.uniform(0, 500, (m, 2))
    rows[:, 3:5] = rows[:, 1:3] + 10
    rows[:, 5] = rng.integers(0, 6, m)
    rows[:, 6] = rng.uniform(0, 1, m)
    params = NmsParams(conf_thres=0.4, classes=(0, 2, 5), max_det=7)
    dets = onnx_nms_detections(rows, batch, params)
    for i, d in enumerate(dets):
        mine = rows[(rows[:, 0] == i) & (rows[:, 6] > np.float32(0.4)) & np.isin(rows[:, 5], (0, 2, 5))]
        mine = mine[np.argsort(-mine[:, 6], kind="stable")][:7]
        np.testing.assert_array_equal(d, mine[:, [1, 2, 3, 4, 6, 5]])
        assert d.shape[0] <= 7


def test_onnx_nms_ignores_padding_rows_and_accepts_a_padded_batch_buffer() -> None:
    padded = np.full((2, 3, 7), np.nan, np.float32)  # [B, R, 7] buffer, NaN beyond the M valid rows
    flat = padded.reshape(-1, 7)
    flat[0] = _row(1, (1, 1, 2, 2), 4, 0.7)
    flat[1] = _row(0, (3, 3, 4, 4), 1, 0.6)
    flat[2] = _row(5, (0, 0, 1, 1), 1, 0.9)  # batch index out of range: ignored
    flat[3] = _row(0.5, (0, 0, 1, 1), 1, 0.9)  # not an integer: ignored
    dets = onnx_nms_detections(padded, 2, NmsParams())
    np.testing.assert_array_equal(dets[0], np.array([[3, 3, 4, 4, 0.6, 1]], np.float32))
    np.testing.assert_array_equal(dets[1], np.array([[1, 1, 2, 2, 0.7, 4]], np.float32))


def test_onnx_nms_no_rows() -> None:
    dets = onnx_nms_detections(np.zeros((0, 7), np.float32), 2, NmsParams())
    assert [d.shape for d in dets] == [(0, 6), (0, 6)]
    assert all(d.dtype == np.float32 for d in dets)


def test_onnx_nms_rejects_other_widths() -> None:
    with pytest.raises(ValueError, match="7 values"):
        onnx_nms_detections(np.zeros((3, 6), np.float32), 1, NmsParams())


def _onnx_ort_head(num_classes: int, max_obj: int, iou: float, score: float, max_wh: float) -> bytes:
    """An end-to-end graph after yolov7's ONNX_ORT: input the raw ``[B, N, 5 + nc]`` predictions."""
    f = np.float32
    convert = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [-0.5, 0, 0.5, 0], [0, -0.5, 0, 0.5]], f)
    consts = {
        "s0": [0], "s4": [4], "s5": [5], "send": [5 + num_classes], "ax2": [2],
        "max_obj": [max_obj], "i0": 0, "i2": 2, "one": [1],
    }  # fmt: skip
    inits = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()]
    inits += [
        numpy_helper.from_array(convert, "convert"),
        numpy_helper.from_array(np.array([iou], f), "iou"),
        numpy_helper.from_array(np.array([score], f), "score"),
        numpy_helper.from_array(np.array(max_wh, f), "max_wh"),
    ]
    n = helper.make_node
    nodes = [
        n("Slice", ["raw", "s0", "s4", "ax2"], ["cxcywh"]),
        n("Slice", ["raw", "s4", "s5", "ax2"], ["conf"]),
        n("Slice", ["raw", "s5", "send", "ax2"], ["cls"]),
        n("Mul", ["cls", "conf"], ["scores"]),
        n("MatMul", ["cxcywh", "convert"], ["boxes"]),
        n("ReduceMax", ["scores"], ["max_score"], axes=[2], keepdims=1),
        n("ArgMax", ["scores"], ["category"], axis=2, keepdims=1),
        n("Cast", ["category"], ["category_f"], to=TensorProto.FLOAT),
        n("Mul", ["category_f", "max_wh"], ["dis"]),
        n("Add", ["boxes", "dis"], ["nmsbox"]),
        n("Transpose", ["max_score"], ["max_score_t"], perm=[0, 2, 1]),
        n("NonMaxSuppression", ["nmsbox", "max_score_t", "max_obj", "iou", "score"], ["selected"]),
        n("Gather", ["selected", "i0"], ["X"], axis=1),
        n("Gather", ["selected", "i2"], ["Y"], axis=1),
        n("Unsqueeze", ["X", "one"], ["X1"]),
        n("Unsqueeze", ["Y", "one"], ["Y1"]),
        n("Concat", ["X1", "Y1"], ["XY"], axis=1),
        n("GatherND", ["boxes", "XY"], ["sel_boxes"]),
        n("GatherND", ["category_f", "XY"], ["sel_cls"]),
        n("GatherND", ["max_score", "XY"], ["sel_score"]),
        n("Cast", ["X1"], ["X1f"], to=TensorProto.FLOAT),
        n("Concat", ["X1f", "sel_boxes", "sel_cls", "sel_score"], ["output"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "onnx_ort_head",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", "n", 5 + num_classes])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["num_dets", 7])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _raw_predictions(rng: np.random.Generator, batch: int, n: int, nc: int) -> np.ndarray:
    raw = np.empty((batch, n, 5 + nc), np.float32)
    raw[..., :2] = rng.uniform(40, 600, (batch, n, 2))
    raw[..., 2:4] = rng.uniform(8, 120, (batch, n, 2))
    raw[..., 4] = rng.uniform(0, 1, (batch, n))
    raw[..., 5:] = rng.uniform(0, 1, (batch, n, nc))
    return raw


@pytest.mark.parametrize("seed", range(4))
def test_onnx_runtime_end2end_head_matches_yolostream_nms(seed: int) -> None:
    """Column order (b, x1, y1, x2, y2, class, score) and corner boxes, against a real ONNX NMS."""
    nc, batch = 4, 3
    conf, iou = 0.3, 0.45
    session = ort.InferenceSession(
        _onnx_ort_head(nc, 100, iou, conf, 4096.0), providers=["CPUExecutionProvider"]
    )
    raw = _raw_predictions(np.random.default_rng(seed), batch, 300, nc)
    (rows,) = session.run(None, {"raw": raw})
    got = onnx_nms_detections(rows, batch, NmsParams(conf_thres=conf, iou_thres=iou, max_det=100))
    for i in range(batch):
        want = detect_image(raw[i], NmsParams(conf_thres=conf, iou_thres=iou, max_det=100))
        assert got[i].shape == want.shape and want.shape[0] > 10
        np.testing.assert_allclose(got[i][:, :4], want[:, :4], atol=1e-4)
        np.testing.assert_allclose(got[i][:, 4], want[:, 4], rtol=1e-6)
        np.testing.assert_array_equal(got[i][:, 5], want[:, 5])


# -------------------------------------------------------------------------------------------- dispatch


def test_decode_end2end_dispatches_by_layout_and_logs_the_limits_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    num, boxes, scores, classes = _efficient(batch=4, k=5, seed=1)
    specs = (
        TensorSpec("num_dets", "int32", (-1, 1)),
        TensorSpec("det_boxes", "float32", (-1, 5, 4)),
        TensorSpec("det_scores", "float32", (-1, 5)),
        TensorSpec("det_classes", "int32", (-1, 5)),
    )
    outputs = dict(zip((s.name for s in specs), (num, boxes, scores, classes), strict=True))
    params = NmsParams(iou_thres=0.6, agnostic=True)
    with caplog.at_level(logging.INFO, logger="streamer.postprocess.end2end"):
        for _ in range(3):
            dets = decode_end2end(OutputLayout.EFFICIENT_NMS, specs, outputs, 2, params)
    assert len(dets) == 2  # only the first `batch` images of the buffers
    want = efficient_nms_detections(num[:2], boxes[:2], scores[:2], classes[:2], params)
    for d, w in zip(dets, want, strict=True):
        np.testing.assert_array_equal(d, w)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1
    assert "detection.iou, detection.agnostic_nms cannot apply" in notes[0]

    rows = np.array([_row(1, (1, 2, 3, 4), 0, 0.9)], np.float32)
    onnx_dets = decode_end2end(
        OutputLayout.ONNX_NMS, (TensorSpec("output", "float32", (-1, 7)),), {"output": rows}, 2, params
    )
    assert [d.shape[0] for d in onnx_dets] == [0, 1]
    with pytest.raises(ValueError, match="not an end-to-end layout"):
        decode_end2end(OutputLayout.GRID, specs, outputs, 2, params)


def test_baked_in_note() -> None:
    assert baked_in_note(OutputLayout.GRID, NmsParams(iou_thres=0.7)) is None
    note = baked_in_note(OutputLayout.ONNX_NMS, NmsParams())
    assert note is not None and "thresholds set at export" in note and "ignored" not in note
    note = baked_in_note(OutputLayout.EFFICIENT_NMS, NmsParams(multi_label=True))
    assert note is not None and "detection.multi_label cannot apply and are ignored" in note
