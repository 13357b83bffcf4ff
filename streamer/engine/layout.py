"""Which of yolov7's three ONNX output layouts a model has, read from its graph alone (nothing is run).

yolov7's ``export.py`` writes one of:

- ``--grid``: one output ``[B, N, 5 + nc]`` (cx, cy, w, h, objectness, class scores); NMS is
  yolostream's (`streamer.postprocess.nms`) → `OutputLayout.GRID`;
- ``--end2end`` (TensorRT): an ``EfficientNMS_TRT`` plugin node and four outputs ``num_dets [B, 1]``
  int32, ``det_boxes [B, K, 4]``, ``det_scores [B, K]``, ``det_classes [B, K]`` int32 →
  `OutputLayout.EFFICIENT_NMS`;
- ``--end2end --max-wh W`` (ONNX Runtime): a ``NonMaxSuppression`` node and one output ``[M, 7]``
  (batch index, x1, y1, x2, y2, class, score) → `OutputLayout.ONNX_NMS`.

yolov7 writes the end-to-end output sizes as *symbolic* dims whose names are numbers (``"1"``, ``"100"``);
those are read as the numbers they spell. In the returned `TensorSpec` shapes the batch axis (the
detection-count axis of ``[M, 7]``) is ``-1``; any other dimension the graph leaves symbolic is ``-1``
too, and an engine replaces it with the size it resolves for its input shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import onnx
from onnx import TensorProto

from streamer.engine.device import OutputLayout, TensorSpec
from streamer.errors import ModelError

__all__ = [
    "EFFICIENT_NMS_OUTPUTS",
    "ImageInput",
    "describe_outputs",
    "detect_layout",
    "detect_num_classes",
    "image_input",
]

EFFICIENT_NMS_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")
"""yolov7's names for the EfficientNMS outputs, in the plugin's output order."""

_DTYPES: dict[int, str] = {
    TensorProto.FLOAT: "float32",
    TensorProto.FLOAT16: "float16",
    TensorProto.INT32: "int32",
    TensorProto.INT64: "int64",
}
_FLOATS = ("float32", "float16")
_INTS = ("int32", "int64")


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | None:
    if d.HasField("dim_value") and d.dim_value > 0:
        return int(d.dim_value)
    if d.HasField("dim_param") and d.dim_param.isdigit() and int(d.dim_param) > 0:
        return int(d.dim_param)  # yolov7 --end2end writes fixed sizes as dim_param strings
    return None


def _shape(value: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    t = value.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(_dim(d) for d in t.shape.dim)


def _dtype(value: onnx.ValueInfoProto) -> str | None:
    return _DTYPES.get(value.type.tensor_type.elem_type)


def describe_outputs(model: onnx.ModelProto) -> str:
    """``name [d0, d1, ...] dtype`` for every graph output, for error messages."""
    parts = []
    for value in model.graph.output:
        shape = _shape(value)
        dims = "?" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
        elem = TensorProto.DataType.Name(value.type.tensor_type.elem_type)
        parts.append(f"{value.name} {dims} {elem.lower()}")
    return "; ".join(parts) or "no outputs"


def _spec(value: onnx.ValueInfoProto, rank: int, *, last: int | None, dtypes: Sequence[str]) -> TensorSpec:
    """A TensorSpec with the first axis -1, after checking rank, last dim (when known) and dtype."""
    shape = _shape(value)
    dtype = _dtype(value)
    if shape is None or len(shape) != rank:
        have = "unknown" if shape is None else str(len(shape))
        raise ValueError(f"{value.name!r} has rank {have}, expected {rank}")
    if last is not None and shape[-1] is not None and shape[-1] != last:
        raise ValueError(f"{value.name!r} has last dimension {shape[-1]}, expected {last}")
    if dtype is None or dtype not in dtypes:
        expected = "/".join(dtypes)
        raise ValueError(f"{value.name!r} is {dtype or 'of an unsupported type'}, expected {expected}")
    dims = [-1 if d is None else d for d in shape]
    dims[0] = -1
    if last is not None:
        dims[-1] = last
    return TensorSpec(value.name, dtype, tuple(dims))


def _nodes(
    model: onnx.ModelProto, op_type: str, domains: tuple[str, ...] | None = None
) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type and (domains is None or n.domain in domains)]


def detect_layout(model: onnx.ModelProto) -> tuple[OutputLayout, tuple[TensorSpec, ...]]:
    """The output layout of a YOLOv7 ONNX graph and its outputs, in the order the layout defines.

    EFFICIENT_NMS outputs come back as (num_dets, det_boxes, det_scores, det_classes) whatever their
    order in the graph; the other layouts have one output. Raises `ModelError` naming the outputs
    found when the graph matches none of the three layouts.
    """
    outputs = list(model.graph.output)
    by_name = {o.name: o for o in outputs}
    try:
        if _nodes(model, "EfficientNMS_TRT"):  # any domain: yolov7 writes it in "TRT"
            return OutputLayout.EFFICIENT_NMS, _efficient_nms(model, by_name)
        if _nodes(model, "NonMaxSuppression", ("", "ai.onnx")):
            if len(outputs) != 1:
                raise ValueError(
                    f"a NonMaxSuppression graph should have one [M, 7] output, has {len(outputs)}"
                )
            return OutputLayout.ONNX_NMS, (_spec(outputs[0], 2, last=7, dtypes=_FLOATS),)
        if len(outputs) != 1:
            raise ValueError(
                f"{len(outputs)} outputs and no NMS node: raw head outputs? export with yolov7's "
                "export.py --grid (one [batch, boxes, 5 + classes] output)"
            )
        spec = _spec(outputs[0], 3, last=None, dtypes=_FLOATS)
        if spec.shape[2] != -1 and spec.shape[2] < 6:
            raise ValueError(f"{outputs[0].name!r} has {spec.shape[2]} values per box, expected 5 + classes")
        return OutputLayout.GRID, (spec,)
    except ValueError as exc:
        raise ModelError(
            f"not a YOLOv7 ONNX layout yolostream knows (--grid, --end2end with EfficientNMS_TRT, "
            f"--end2end --max-wh with NonMaxSuppression): {exc}. Outputs found: {describe_outputs(model)}"
        ) from None


def _efficient_nms(model: onnx.ModelProto, by_name: dict[str, onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    if len(by_name) != 4:
        raise ValueError(f"an EfficientNMS_TRT graph should have 4 outputs, has {len(by_name)}")
    # Roles by the plugin's output order when its outputs are the graph's, else by yolov7's names.
    names: Sequence[str] = EFFICIENT_NMS_OUTPUTS
    for node in _nodes(model, "EfficientNMS_TRT"):
        if len(node.output) == 4 and set(node.output) == set(by_name):
            names = list(node.output)
    if set(names) != set(by_name):
        raise ValueError(
            f"EfficientNMS_TRT outputs not found: expected {', '.join(EFFICIENT_NMS_OUTPUTS)} "
            "(or the plugin's own outputs as graph outputs)"
        )
    num, boxes, scores, classes = (by_name[n] for n in names)
    specs = (
        _spec(num, 2, last=1, dtypes=_INTS),
        _spec(boxes, 3, last=4, dtypes=_FLOATS),
        _spec(scores, 2, last=None, dtypes=_FLOATS),
        _spec(classes, 2, last=None, dtypes=_INTS),
    )
    k = {s.shape[1] for s in specs[1:]} - {-1}
    if len(k) > 1:
        raise ValueError(
            f"det_boxes, det_scores and det_classes disagree on the detection count: {sorted(k)}"
        )
    return specs


def detect_num_classes(model: onnx.ModelProto) -> int | None:
    """The number of classes an end-to-end graph scores, when shape inference can tell; else None.

    EFFICIENT_NMS: the last dim of the plugin's scores input ``[B, N, nc]``. ONNX_NMS (yolov7's
    ``ONNX_ORT``): the last dim of the tensor its ``ArgMax`` over classes reads. GRID models carry the
    count in their output (``5 + nc``) and need no inference.
    """
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot handle (custom ops are skipped, not fatal)
        return None
    values = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    candidates = [n.input[1] for n in _nodes(inferred, "EfficientNMS_TRT") if len(n.input) > 1]
    candidates += [n.input[0] for n in _nodes(inferred, "ArgMax", ("", "ai.onnx"))]
    for name in candidates:
        value = values.get(name)
        shape = _shape(value) if value is not None else None
        if shape and len(shape) == 3 and shape[-1] is not None:
            return shape[-1]
    return None


class ImageInput(NamedTuple):
    """The model's NCHW image input: its name and the sizes the graph fixes (None: left symbolic)."""

    name: str
    dtype: str
    batch: int | None
    height: int | None
    width: int | None


def image_input(model: onnx.ModelProto) -> ImageInput:
    """The one ``[batch, 3, H, W]`` float input of a YOLOv7 graph; `ModelError` for anything else."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    shape = _shape(inputs[0]) if len(inputs) == 1 else None
    if shape is None or len(shape) != 4:
        found = ", ".join(f"{i.name} {_shape(i)}" for i in inputs) or "none"
        raise ModelError(f"expected one NCHW image input, found: {found}")
    dtype = _dtype(inputs[0])
    if dtype not in _FLOATS:
        elem = TensorProto.DataType.Name(inputs[0].type.tensor_type.elem_type).lower()
        raise ModelError(f"input {inputs[0].name!r} is {elem}, expected float32 (or float16)")
    batch, channels, height, width = shape
    if channels not in (None, 3):
        raise ModelError(f"input {inputs[0].name!r} has {channels} channels, expected 3")
    return ImageInput(inputs[0].name, dtype, batch, height, width)
