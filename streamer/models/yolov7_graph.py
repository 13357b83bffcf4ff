"""The ONNX graph under construction, for `streamer.models.yolov7_onnx` (checkpoint → ONNX).

`Graph` hands out unique names, appends nodes and weights, and finishes the model: opset 17, input
``images`` ``[batch, 3, img, img]`` (H and W static, the batch dynamic), output ``output``
``[batch, N, 5 + nc]``, with the class names, strides and source file as metadata. What each yolov7 module
writes into it is in `streamer.models.yolov7_layers`, the detection heads in `streamer.models.yolov7_heads`.

Weights are float32 by default. ``fp16=True`` stores every weight as float16 (half the file) and casts it
back to float32 in the graph (a Cast on each initializer, folded by ONNX Runtime and TensorRT at load
time): compute, input and output stay float32; only the weights are rounded. Build a TensorRT engine with
its fp16 flag for fp16 compute.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from streamer.errors import ModelError

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "Graph"]

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "output"
_FP16_MAX = float(np.finfo(np.float16).max)


class Graph:
    """The nodes and weights written so far, and what the head found (classes, boxes, strides)."""

    def __init__(self, *, fp16: bool, img: int) -> None:
        self.fp16 = fp16
        self.img = img
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.has_head = False
        self.nc = 0
        self.boxes = 0
        self.strides: list[float] = []
        self._taken: set[str] = {INPUT_NAME}

    def name(self, base: str) -> str:
        name, n = base, 1
        while name in self._taken:
            name, n = f"{base}_{n}", n + 1
        self._taken.add(name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        out = self.name(f"{name}/{op_type}")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def ops(self, op_type: str, inputs: Sequence[str], name: str, n: int, **attrs: Any) -> list[str]:
        base = self.name(f"{name}/{op_type}")
        outs = [f"{base}_out{k}" for k in range(n)]
        self._taken.update(outs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, **attrs))
        return outs

    def weight(self, name: str, value: np.ndarray) -> str:
        """A float weight: float32, or float16 plus a Cast back to float32 when `fp16`."""
        value = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(value)):
            raise ModelError(f"{name} has NaN or infinite values")
        if not self.fp16:
            return self.const(name, value.astype(np.float32))
        if np.abs(value).max(initial=0.0) > _FP16_MAX:
            raise ModelError(f"{name} has values beyond float16's range; import without fp16")
        half = self.const(f"{name}.fp16", value.astype(np.float16))
        return self.op("Cast", [half], name, to=TensorProto.FLOAT)

    def const(self, name: str, value: np.ndarray) -> str:
        name = self.name(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def finish(self, output: str, *, names: list[str], source: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [output], [OUTPUT_NAME], name="output"))
        graph = helper.make_graph(
            self.nodes,
            "yolov7",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, self.img, self.img])],
            [
                helper.make_tensor_value_info(
                    OUTPUT_NAME, TensorProto.FLOAT, ["batch", self.boxes, 5 + self.nc]
                )
            ],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="yolostream"
        )
        model.ir_version = 8  # opset 17; readable by onnxruntime >= 1.14 and TensorRT 8.6
        meta = {"names": json.dumps(names), "stride": json.dumps(self.strides), "source": source}
        helper.set_model_props(model, {k: v for k, v in meta.items() if v})
        onnx.checker.check_model(model)
        return model
