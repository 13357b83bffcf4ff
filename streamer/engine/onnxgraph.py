"""Small edits of ONNX graphs, on copies: widen a float16 graph to float32, expose intermediate tensors.

Pure `onnx` (no runtime): used by the torch backend (which converts an fp32 copy of the graph) and by
`yolostream parity` (which marks node outputs as extra graph outputs to find the first layer that
diverges). Every function returns a new `ModelProto` and leaves its argument untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, ModelProto, TensorProto, numpy_helper

__all__ = ["expose_outputs", "fp16_nodes", "node_outputs", "widen_to_fp32"]


def _graphs(graph: GraphProto) -> Iterator[GraphProto]:
    """`graph` and every subgraph (If / Loop / Scan bodies) inside it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _widen_tensor(tensor: TensorProto) -> None:
    if tensor.data_type == TensorProto.FLOAT16:
        array = numpy_helper.to_array(tensor).astype(np.float32)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def _widen_value_infos(infos: Iterable[onnx.ValueInfoProto]) -> None:
    for info in infos:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT16:
            info.type.tensor_type.elem_type = TensorProto.FLOAT


def fp16_nodes(model: ModelProto) -> int:
    """How many places make `model` compute in float16 (fp16 initializers, constants and casts to fp16).

    0 means a plain float32 graph. A model "with fp16 weights and fp32 input/output" (a float16
    conversion that kept fp32 I/O) computes its layers in float16: ONNX Runtime runs it as stored.
    """
    count = 0
    for graph in _graphs(model.graph):
        count += sum(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                fp16_constant = attr.type == AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16
                fp16_cast = node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16
                count += fp16_constant or fp16_cast
    return count


def widen_to_fp32(model: ModelProto) -> ModelProto:
    """A copy of `model` computing in float32 wherever it computed in float16.

    Float16 initializers and constant tensors become float32 (exact: every fp16 value is an fp32 value),
    ``Cast(to=float16)`` becomes ``Cast(to=float32)``, and float16 inputs, outputs and value_info entries
    are declared float32. The result is the model a float32 PyTorch module of the same weights computes.
    """
    out = ModelProto()
    out.CopyFrom(model)
    for graph in _graphs(out.graph):
        for tensor in graph.initializer:
            _widen_tensor(tensor)
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    _widen_tensor(attr.t)
                elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                    attr.i = TensorProto.FLOAT
        _widen_value_infos(graph.input)
        _widen_value_infos(graph.output)
        _widen_value_infos(graph.value_info)
    return out


def node_outputs(model: ModelProto, op_types: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """``(node name, op type, output tensor)`` of the top-level graph's nodes, in topological order.

    Only the first output of each node; only nodes of `op_types` when given. ONNX stores nodes in
    topological order, so "the first that diverges" in this list is the earliest layer to blame.
    """
    rows = []
    for i, node in enumerate(model.graph.node):
        if node.output and node.output[0] and (op_types is None or node.op_type in op_types):
            rows.append((node.name or f"#{i} {node.op_type}", node.op_type, node.output[0]))
    return rows


def expose_outputs(model: ModelProto, tensors: Sequence[str]) -> ModelProto:
    """A copy of `model` with `tensors` (names of intermediate tensors) added as graph outputs.

    The original outputs stay first, in their order. Element types come from ONNX shape inference
    (float32 when it cannot tell).
    """
    out = ModelProto()
    out.CopyFrom(model)
    existing = {o.name for o in out.graph.output}
    wanted = [t for t in dict.fromkeys(tensors) if t not in existing]
    try:
        inferred = onnx.shape_inference.infer_shapes(out)
        types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    except Exception:  # shape inference is best effort; runtimes accept a float output declaration
        types = {}
    for name in wanted:
        elem = types.get(name) or TensorProto.FLOAT
        out.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return out
