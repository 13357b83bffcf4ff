"""A torch module from an ONNX graph that never waits for the GPU: constants baked in, any batch size.

onnx2torch keeps the shape-like inputs of Reshape, Slice, Split and Resize as tensors and reads them
back with ``.tolist()`` / ``.cpu()`` on every call. On CUDA each such read waits for the GPU to finish
everything queued so far, so a forward pass cannot be queued ahead of the GPU (no overlap of batches,
no CUDA graph capture, no ``torch.compile``). Here the graph is first given a fixed batch size and
constant-folded by ONNX Runtime's basic optimiser (standard ONNX ops only), which turns every shape
computation into a constant; the converters below then bake those constants into the modules as Python
values.

A graph folded at one batch size holds that size in some of its constants. `convert_any_batch` folds it
twice, at batch 1 and at batch 2, and compares the two: every constant that differs must be one the
batch size explains — a Reshape target whose first dimension is the batch (rewritten to ``-1`` or ``0``,
"whatever the input has"), or the index tensor of a ScatterND that writes a box of the data with the
whole batch on axis 0 (yolov7's in-place ``y[..., :85] = ...``: turned into a slice assignment, which
also drops the index tensor, 86 MB per image of batch at 640). Anything else raises `NotBatchGeneric`
and the caller falls back to `convert_static` at one batch size. Folding at batch 1 also keeps the
folded graph small: at batch 32 the index tensors alone made it exceed protobuf's 2 GB.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from streamer.engine.onnxgraph import fp16_nodes, widen_to_fp32
from streamer.errors import ModelError

log = logging.getLogger(__name__)


BOX_ATTRIBUTE = "yolostream_box"
"""Set by `any_batch` on a ScatterND whose indices address a box over the whole batch: start, stop per
indexed axis, stop -1 for "to the end" (the converter then needs neither the indices nor the shapes)."""


class NotBatchGeneric(ModelError):
    """The folded graph holds a batch-dependent constant that yolostream cannot generalise."""


def fold_static(model: Path | onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """`model` in fp32 with input batch fixed to `batch` and every constant subgraph folded."""
    import onnxruntime as ort

    proto = onnx.load(str(model)) if isinstance(model, Path) else _copy(model)
    if fp16_nodes(proto):
        proto = widen_to_fp32(proto)
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = batch
    for output in proto.graph.output:  # let the folder infer the output shapes anew
        output.type.tensor_type.shape.dim[0].Clear()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory() as tmp:
        so.optimized_model_filepath = str(Path(tmp) / "folded.onnx")
        ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


# -- batch-generic graphs ----------------------------------------------------------------------------


def scatter_box(indices: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """``(start, stop)`` per indexed axis when ScatterND `indices` address a dense box, in order.

    That is ``indices[i0, …, ik-1] == (start_0 + i0, …, start_k-1 + ik-1)``: the scatter then writes
    ``data[start_0:stop_0, …] = updates``. None for any other index pattern.
    """
    k = indices.shape[-1]
    if indices.ndim != k + 1 or k == 0:
        return None
    grid = np.indices(indices.shape[:-1], dtype=np.int64)
    box = []
    for axis in range(k):
        offset = indices[..., axis] - grid[axis]
        start = int(offset.flat[0])
        if start < 0 or not np.all(offset == start):
            return None
        box.append((start, start + indices.shape[axis]))
    return tuple(box)


@dataclass(frozen=True)
class _Difference:
    node: onnx.NodeProto
    position: int
    one: np.ndarray
    two: np.ndarray


def _constant_inputs(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def _differences(one: onnx.ModelProto, two: onnx.ModelProto) -> list[_Difference]:
    """The constant node inputs that differ between the graph folded at batch 1 and at batch 2."""
    nodes1, nodes2 = one.graph.node, two.graph.node
    signature1 = [(n.op_type, n.name, len(n.input)) for n in nodes1]
    signature2 = [(n.op_type, n.name, len(n.input)) for n in nodes2]
    if signature1 != signature2:
        raise NotBatchGeneric("the graph folds into different node lists at batch 1 and batch 2")
    init1, init2 = _constant_inputs(one.graph), _constant_inputs(two.graph)
    found = []
    for node1, node2 in zip(nodes1, nodes2, strict=True):
        for position, (a, b) in enumerate(zip(node1.input, node2.input, strict=True)):
            if (a in init1) != (b in init2):
                raise NotBatchGeneric(
                    f"{node1.op_type} {node1.name!r}: input {position} is folded at one size only"
                )
            if a not in init1:
                continue
            v1, v2 = numpy_helper.to_array(init1[a]), numpy_helper.to_array(init2[b])
            if v1.shape != v2.shape or not np.array_equal(v1, v2):
                found.append(_Difference(node1, position, v1, v2))
    return found


def any_batch(model: Path) -> onnx.ModelProto:
    """`model` folded at batch 1, with its batch-dependent constants made to follow the input's batch.

    Raises `NotBatchGeneric` when a constant depends on the batch in a way not handled here.
    """
    source = onnx.load(str(model))
    one, two = fold_static(source, 1), fold_static(source, 2)
    init1 = _constant_inputs(one.graph)
    for diff in _differences(one, two):
        node, where = diff.node, f"{diff.node.op_type} {diff.node.name!r}"
        if node.op_type == "Reshape" and diff.position == 1:
            target = _batch_reshape(diff.one, diff.two, where)
            init1[node.input[1]].CopyFrom(numpy_helper.from_array(target, node.input[1]))
        elif node.op_type == "ScatterND" and diff.position == 1:
            box1, box2 = scatter_box(diff.one), scatter_box(diff.two)
            if box1 is None or box2 is None or box1[0] != (0, 1) or box2[0] != (0, 2) or box1[1:] != box2[1:]:
                raise NotBatchGeneric(f"{where}: its indices are not a box over the whole batch")
            bounds = [0, -1] + [v for start_stop in box1[1:] for v in start_stop]  # -1: the whole axis
            node.attribute.append(onnx.helper.make_attribute(BOX_ATTRIBUTE, bounds))
        elif node.op_type == "Resize" and diff.position == 3:  # sizes [batch, channels, height, width]
            _check_leading_batch(diff.one, diff.two, where)  # (the converter resizes dimensions 2: only)
        else:
            raise NotBatchGeneric(f"{where}: input {diff.position} depends on the batch size")
    return one


def _check_leading_batch(one: np.ndarray, two: np.ndarray, where: str) -> None:
    """A shape whose first dimension is the batch (1 and 2) and whose others do not depend on it."""
    same_rest = one.ndim == 1 and one.shape == two.shape and np.array_equal(one[1:], two[1:])
    if not (same_rest and one[0] == 1 and two[0] == 2):
        raise NotBatchGeneric(f"{where}: a shape that depends on the batch size other than in dimension 0")


def _batch_reshape(one: np.ndarray, two: np.ndarray, where: str) -> np.ndarray:
    """A Reshape target whose first dimension is the batch, rewritten to follow the input's batch."""
    _check_leading_batch(one, two, where)
    target = one.copy()
    # -1 (infer) when the other dimensions are all known; 0 (copy the input's) when one of them is -1:
    # then the input's first dimension must be the batch, as it is in every batch-major graph.
    target[0] = 0 if -1 in one[1:] else -1
    return target.astype(one.dtype)


# -- converters --------------------------------------------------------------------------------------


def _constants(node: Any, graph: Any) -> list[Any] | None:
    """The numpy values of `node`'s inputs after the first, or None if one is not a constant."""
    values: list[Any] = []
    for name in node.input_values[1:]:
        if name == "":
            values.append(None)
        elif name in graph.initializers:
            values.append(graph.initializers[name].to_numpy())
        else:
            return None
    return values


def register_static_converters(registry: Any) -> None:
    """Override onnx2torch's Reshape/Slice/Split/Resize/ScatterND converters where their parameters are
    constant (after folding)."""
    import torch
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    if getattr(registry, "_yolostream_static", False):
        return

    class Reshape(torch.nn.Module):
        def __init__(self, shape: list[int]) -> None:
            super().__init__()
            self.shape = shape

        def forward(self, x: Any) -> Any:
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(self.shape)]
            return torch.reshape(x, shape)

    class Slice(torch.nn.Module):
        def __init__(self, index: tuple[slice, ...]) -> None:
            super().__init__()
            self.index = index

        def forward(self, x: Any) -> Any:
            return x[self.index]

    class Split(torch.nn.Module):
        def __init__(self, sizes: list[int], axis: int) -> None:
            super().__init__()
            self.sizes, self.axis = sizes, axis

        def forward(self, x: Any) -> Any:
            return torch.split(x, self.sizes, dim=self.axis)

    class Upsample(torch.nn.Module):
        def __init__(self, scale: tuple[float, ...] | None, size: tuple[int, ...] | None) -> None:
            super().__init__()
            self.scale, self.size = scale, size

        def forward(self, x: Any) -> Any:
            return torch.nn.functional.interpolate(x, size=self.size, scale_factor=self.scale, mode="nearest")

    class SliceAssign(torch.nn.Module):
        """ScatterND whose indices address a box: ``out = data; out[box] = updates``."""

        def __init__(self, index: tuple[slice, ...]) -> None:
            super().__init__()
            self.index = index

        def forward(self, data: Any, updates: Any) -> Any:
            out = data.clone()
            out[self.index] = updates
            return out

    def mapping(node: Any, *positions: int) -> Any:
        return OnnxMapping(inputs=tuple(node.input_values[p] for p in positions), outputs=node.output_values)

    def reshape(node: Any, graph: Any) -> Any:
        consts = _constants(node, graph)
        if consts is None or node.attributes.get("allowzero", 0):
            return None
        return Reshape([int(d) for d in consts[0]])

    def slice_(node: Any, graph: Any) -> Any:
        consts = _constants(node, graph)
        if consts is None:
            return None
        starts, ends, axes, steps = [*consts, None, None][:4]
        axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
        steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
        if any(s < 0 for s in steps) or any(a < 0 for a in axes):
            return None  # onnx2torch's own handles flips and negative axes (with a sync)
        index = [slice(None)] * (max(axes) + 1)
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            index[axis] = slice(int(start), int(end), step)
        return Slice(tuple(index))

    def split(node: Any, graph: Any) -> Any:
        consts = _constants(node, graph)
        if not consts or consts[0] is None:
            return None
        return Split([int(s) for s in consts[0]], int(node.attributes.get("axis", 0)))

    def resize(node: Any, graph: Any) -> Any:
        consts = _constants(node, graph)
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in node.attributes.items()}
        # interpolate(nearest) reads source pixel floor(dst * in / out): ONNX's asymmetric + floor
        exact = (
            attrs.get("mode", "nearest") == "nearest"
            and attrs.get("coordinate_transformation_mode", "half_pixel") == "asymmetric"
            and attrs.get("nearest_mode", "round_prefer_floor") == "floor"
        )
        if consts is None or not exact:
            return None
        scales, sizes = ([*consts[1:], None, None])[:2]
        if scales is not None and scales.size:
            if [float(v) for v in scales[:2]] != [1.0, 1.0]:
                return None
            return Upsample(tuple(float(v) for v in scales[2:]), None)
        if sizes is not None and sizes.size:
            return Upsample(None, tuple(int(v) for v in sizes[2:]))  # batch and channels are unchanged
        return None

    def scatter_nd(node: Any, graph: Any) -> Any:
        bounds = node.attributes.get(BOX_ATTRIBUTE)
        if bounds is not None:  # marked by any_batch
            pairs = zip(bounds[::2], bounds[1::2], strict=True)
            return SliceAssign(tuple(slice(s, None if e == -1 else e) for s, e in pairs)), (0, 2)
        if node.attributes.get("reduction", "none") not in ("none", b"none"):
            return None
        name = node.input_values[1]
        if name not in graph.initializers:
            return None
        box = scatter_box(graph.initializers[name].to_numpy())  # exact at the batch the graph was folded at
        if box is None:
            return None
        return SliceAssign(tuple(slice(start, stop) for start, stop in box)), (0, 2)

    for op, make in (
        ("Reshape", reshape), ("Slice", slice_), ("Split", split), ("Resize", resize),
        ("ScatterND", scatter_nd),
    ):  # fmt: skip
        for key in [k for k in registry._CONVERTER_REGISTRY if k.operation_type == op]:
            original = registry._CONVERTER_REGISTRY[key]

            def convert(node: Any, graph: Any, _make: Any = make, _original: Any = original) -> Any:
                made = _make(node, graph)
                if made is None:
                    return _original(node, graph)
                module, positions = made if isinstance(made, tuple) else (made, (0,))
                return OperationConverterResult(torch_module=module, onnx_mapping=mapping(node, *positions))

            registry._CONVERTER_REGISTRY[key] = convert
    registry._yolostream_static = True


def _convert(folded: onnx.ModelProto, what: str) -> Any:
    from streamer.engine.torch import _import_onnx2torch

    onnx2torch = _import_onnx2torch()
    from onnx2torch.node_converters import registry

    register_static_converters(registry)
    try:
        return onnx2torch.convert(folded)
    except Exception as exc:
        raise ModelError(f"onnx2torch cannot convert {what}: {exc}") from exc


def convert_any_batch(model: Path) -> Any:
    """A torch module (on the CPU, fp32) computing `model` for any batch size, sync-free.

    Raises `NotBatchGeneric` when the graph's folded constants depend on the batch in a way not handled.
    """
    return _convert(any_batch(model), f"{model} (any batch)")


def convert_static(model: Path, batch: int) -> Any:
    """A torch module (on the CPU, fp32) computing `model` for exactly `batch` images, sync-free."""
    return _convert(fold_static(model, batch), f"{model} (static batch {batch})")
