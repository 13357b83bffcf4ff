"""ONNX models for tests, written with the `onnx` package (no downloads, no weights).

The oracle model has a YOLOv7 ``export.py --grid`` interface — input ``images`` float32
``[batch, 3, H, W]`` (RGB 0..1, letterboxed), output ``output`` float32 ``[batch, 1, 5 + num_classes]``
(cx, cy, w, h in input pixels, objectness, class scores) — and its one row is known from the input: a box
of fixed size centred on the bright spot of the image, so an end-to-end test can check that the box comes
back in exactly the right place in source pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "images"
OUTPUT_NAME = "output"


def write_oracle_model(
    path: str | Path,
    *,
    input_size: tuple[int, int] = (640, 640),
    box_size: tuple[float, float] = (40.0, 40.0),
    class_id: int = 0,
    num_classes: int = 80,
    threshold: float = 0.5,
    dynamic_batch: bool = True,
    fixed_batch: int = 1,
    opset: int = 17,
) -> Path:
    """Write the oracle graph to `path` and return it.

    `input_size` is (h, w) of the model input; `box_size` the (w, h) of the box in input pixels.

    The box centre is the intensity centroid of the bright spot, with sub-pixel accuracy::

        s = sum over channels of the input                       [batch, H, W]
        weight = relu(s - threshold * max(s))                    per image
        cx = sum(weight * (x + 0.5)) / sum(weight)               (cy likewise with y + 0.5)

    ``x + 0.5`` is the centre of pixel column ``x`` in continuous coordinates (pixel ``x`` covers
    ``[x, x + 1)``), the convention of ``cv2.resize`` and of `LetterboxGeometry`, so a disc drawn at
    ``(cx, cy)`` in source pixels (`tests.support.media.draw_disc`) comes back at ``(cx, cy)`` through
    ``letterbox`` → this model → ``to_source``: measured within ~0.25 source px for a disc of 8 input px
    radius at 1920×1080 and below (the error is the aliasing of ``INTER_LINEAR`` downscaling, ~0.1 input px).
    An ArgMax of the brightest pixel would be biased to the top-left of a flat-topped disc.

    Only pixels above `threshold` × the brightest value count, so the spot must be more than twice as
    bright as the rest, letterbox padding (114) included: a 255 spot on a dark (16) frame is. A uniform
    input gives ``sum(weight) = 0`` and a centre of (0, 0) (a tiny epsilon avoids NaN).

    Objectness is 1.0, the score of `class_id` 1.0 and every other class 0.0. `dynamic_batch` names the
    batch dimension ``batch``, otherwise it is `fixed_batch`.
    """
    h, w = input_size
    if not 0 <= class_id < num_classes:
        raise ValueError(f"class_id {class_id} not in [0, {num_classes})")
    batch: str | int = "batch" if dynamic_batch else fixed_batch

    tail = np.zeros((1, 3 + num_classes), dtype=np.float32)  # w, h, objectness, class scores
    tail[0, 0], tail[0, 1], tail[0, 2], tail[0, 3 + class_id] = box_size[0], box_size[1], 1.0, 1.0
    inits = [
        numpy_helper.from_array((np.arange(w, dtype=np.float32) + 0.5).reshape(1, 1, w), "xs"),
        numpy_helper.from_array((np.arange(h, dtype=np.float32) + 0.5).reshape(1, h, 1), "ys"),
        numpy_helper.from_array(np.array([threshold], dtype=np.float32), "threshold"),
        numpy_helper.from_array(np.array([1e-12], dtype=np.float32), "eps"),
        numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero"),
        numpy_helper.from_array(tail, "tail"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_c"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes_hw"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_row"),
    ]

    def reduce(op: str, x: str, axes: str, out: str, keepdims: int) -> onnx.NodeProto:
        # ReduceSum takes its axes as an input from opset 13, the other Reduce* ops from opset 18.
        if op == "ReduceSum" or opset >= 18:
            return helper.make_node(op, [x, axes], [out], keepdims=keepdims)
        values = {"axis_c": [1], "axes_hw": [1, 2]}[axes]
        return helper.make_node(op, [x], [out], axes=values, keepdims=keepdims)

    nodes = [
        reduce("ReduceSum", INPUT_NAME, "axis_c", "s", 0),  # [B, H, W]
        reduce("ReduceMax", "s", "axes_hw", "smax", 1),  # [B, 1, 1]
        helper.make_node("Mul", ["smax", "threshold"], ["cut"]),
        helper.make_node("Sub", ["s", "cut"], ["s_cut"]),
        helper.make_node("Relu", ["s_cut"], ["weight"]),  # [B, H, W]
        reduce("ReduceSum", "weight", "axes_hw", "m0", 0),  # [B]
        helper.make_node("Add", ["m0", "eps"], ["m0e"]),
        helper.make_node("Mul", ["weight", "xs"], ["wx"]),
        reduce("ReduceSum", "wx", "axes_hw", "mx", 0),
        helper.make_node("Div", ["mx", "m0e"], ["cx"]),  # [B]
        helper.make_node("Mul", ["weight", "ys"], ["wy"]),
        reduce("ReduceSum", "wy", "axes_hw", "my", 0),
        helper.make_node("Div", ["my", "m0e"], ["cy"]),
        helper.make_node("Unsqueeze", ["cx", "axis_row"], ["cx1"]),  # [B, 1]
        helper.make_node("Unsqueeze", ["cy", "axis_row"], ["cy1"]),
        helper.make_node("Mul", ["cx1", "zero"], ["zero_b"]),  # 0, shaped [B, 1]: broadcasts the tail
        helper.make_node("Add", ["zero_b", "tail"], ["tail_b"]),  # [B, 3 + num_classes]
        helper.make_node("Concat", ["cx1", "cy1", "tail_b"], ["row"], axis=1),  # [B, 5 + num_classes]
        helper.make_node("Unsqueeze", ["row", "axis_row"], [OUTPUT_NAME]),  # [B, 1, 5 + num_classes]
    ]
    graph = helper.make_graph(
        nodes,
        "yolo_oracle",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, 1, 5 + num_classes])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="yolostream-tests")
    model.ir_version = helper.find_min_ir_version_for(opsets)  # loadable by older ONNX Runtime builds too
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def write_spots_model(
    path: str | Path,
    *,
    input_size: tuple[int, int] = (320, 320),
    box_size: float = 48.0,
    stride: int = 4,
    threshold: float = 2.0,
) -> Path:
    """Write an oracle that finds *every* bright spot: one class (``spot``), one box per spot.

    Same interface as `write_oracle_model` with one class, but one candidate row per ``stride`` x
    ``stride`` cell of the input (``(H / stride) * (W / stride)`` rows)::

        s = sum over channels                                 [B, 1, H, W]
        p = average of s over each cell, then over 3x3 cells  [B, 1, H/stride, W/stride]
        objectness = 1 where p is its 3x3 neighbourhood's maximum and above `threshold`, else 0

    and each row's box is `box_size` square, centred on its cell. A disc of radius ~2 cells or more of
    value 255 (3.0 summed) on a dark background makes one peak within a cell of its centre (neighbours
    that tie make boxes that overlap by far more than NMS's IoU, so one is kept): positions are good to
    about ``stride`` input pixels, enough to track and count spots, not to measure the letterbox.
    """
    h, w = input_size
    if h % stride or w % stride:
        raise ValueError(f"input_size {input_size} is not a multiple of stride {stride}")
    gh, gw = h // stride, w // stride
    n = gh * gw
    ys, xs = np.mgrid[0:gh, 0:gw]
    centres = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1).astype(np.float32)
    tail = np.array([[box_size, box_size]], dtype=np.float32)
    inits = [
        numpy_helper.from_array(centres.reshape(1, n, 2), "centres"),
        numpy_helper.from_array(tail.reshape(1, 1, 2), "size"),
        numpy_helper.from_array(np.array([threshold], dtype=np.float32), "threshold"),
        numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis_c"),
        numpy_helper.from_array(np.array([0, n, 1], dtype=np.int64), "rows_shape"),
    ]
    nodes = [
        helper.make_node("ReduceSum", [INPUT_NAME, "axis_c"], ["s"], keepdims=1),  # [B, 1, H, W]
        helper.make_node(
            "AveragePool", ["s"], ["p0"], kernel_shape=[stride, stride], strides=[stride, stride]
        ),
        helper.make_node(
            "AveragePool", ["p0"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0
        ),
        helper.make_node("MaxPool", ["p"], ["pmax"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Equal", ["p", "pmax"], ["is_max"]),
        helper.make_node("Greater", ["p", "threshold"], ["bright"]),
        helper.make_node("And", ["is_max", "bright"], ["peak"]),
        helper.make_node("Cast", ["peak"], ["obj4"], to=TensorProto.FLOAT),  # [B, 1, gh, gw]
        helper.make_node("Reshape", ["obj4", "rows_shape"], ["obj"]),  # [B, n, 1] (0: keep the batch)
        helper.make_node("Mul", ["obj", "zero"], ["zeros"]),  # [B, n, 1]
        helper.make_node("Add", ["zeros", "centres"], ["xy"]),  # [B, n, 2]
        helper.make_node("Add", ["zeros", "size"], ["wh"]),  # [B, n, 2]
        helper.make_node("Concat", ["xy", "wh", "obj", "obj"], [OUTPUT_NAME], axis=2),  # class 0 = obj
    ]
    graph = helper.make_graph(
        nodes,
        "yolo_spots_oracle",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, h, w])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", n, 6])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="yolostream-tests")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, str(path))
    return path
