"""A torch module from an ONNX graph that never waits for the GPU: static batch, constants baked in.

onnx2torch keeps the shape-like inputs of Reshape, Slice, Split and Resize as tensors and reads them
back with ``.tolist()`` / ``.cpu()`` on every call. On CUDA each such read waits for the GPU to finish
everything queued so far, so a forward pass cannot be queued ahead of the GPU (no overlap of batches,
and no CUDA graph capture). Here the graph is first given a fixed batch size and constant-folded by ONNX
Runtime's basic optimiser (standard ONNX ops only), which turns every shape computation into a constant;
the converters below then bake those constants into the modules as Python values.

`convert_static(model, batch)` returns the module; a partial batch is run padded to `batch`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import onnx

from streamer.engine.onnxgraph import fp16_nodes, widen_to_fp32
from streamer.errors import ModelError

log = logging.getLogger(__name__)


def fold_static(model: Path, batch: int) -> onnx.ModelProto:
    """`model` in fp32 with input batch fixed to `batch` and every constant subgraph folded."""
    import onnxruntime as ort

    proto = onnx.load(str(model))
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
    """Override onnx2torch's Reshape/Slice/Split/Resize converters where their parameters are constant."""
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

    def only_data(node: Any) -> Any:
        return OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)

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

    for op, make in (("Reshape", reshape), ("Slice", slice_), ("Split", split), ("Resize", resize)):
        for key in [k for k in registry._CONVERTER_REGISTRY if k.operation_type == op]:
            original = registry._CONVERTER_REGISTRY[key]

            def convert(node: Any, graph: Any, _make: Any = make, _original: Any = original) -> Any:
                module = _make(node, graph)
                if module is None:
                    return _original(node, graph)
                return OperationConverterResult(torch_module=module, onnx_mapping=only_data(node))

            registry._CONVERTER_REGISTRY[key] = convert
    registry._yolostream_static = True


def convert_static(model: Path, batch: int) -> Any:
    """A torch module (on the CPU, fp32) computing `model` for exactly `batch` images, sync-free."""
    from streamer.engine.torch import _import_onnx2torch

    onnx2torch = _import_onnx2torch()
    from onnx2torch.node_converters import registry

    register_static_converters(registry)
    folded = fold_static(model, batch)
    try:
        return onnx2torch.convert(folded)
    except Exception as exc:
        raise ModelError(f"onnx2torch cannot convert {model} (static batch {batch}): {exc}") from exc
