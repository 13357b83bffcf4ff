"""A YOLOv7 graph small enough to carry to the GPU host: the real graph without its weights.

`strip` keeps every node and the shape and dtype of every initializer of an ONNX model, and drops the
weight data (yolov7-coco.onnx: 74 MB → a few hundred KB). `fill` puts random weights back (He-scaled so
activations stay finite) and pushes the detection heads' objectness biases down so that, as with a
trained model on real video, only a few boxes pass the confidence threshold (NMS cost stays realistic).
The result has exactly the real model's layers and cost, not its accuracy: it is for speed work only.

    python benchmarks/skeleton.py strip ../shared/models/yolov7-coco.onnx \
        benchmarks/.cache/yolov7.skeleton.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

_DIMS_KEY = "skeleton_dims"


def strip(src: Path, dst: Path) -> Path:
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue  # shapes, axes, indices: small, and they must stay exact
        init.ClearField("raw_data")
        for field in ("float_data", "int32_data", "int64_data", "double_data"):
            init.ClearField(field)
        init.doc_string = _DIMS_KEY
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def fill(model: onnx.ModelProto, seed: int = 0, objectness_bias: float = -9.0) -> onnx.ModelProto:
    """Random weights for a stripped model (in place); returns it."""
    rng = np.random.default_rng(seed)
    consumers = {i: node for node in model.graph.node for i in node.input}
    for init in model.graph.initializer:
        if init.doc_string != _DIMS_KEY:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        shape = tuple(init.dims)
        node = consumers.get(init.name)
        while node is not None and node.op_type == "Cast":  # fp16 weights are cast before use
            node = consumers.get(node.output[0])
        if len(shape) == 4:  # conv weight
            fan_in = shape[1] * shape[2] * shape[3]
            values = rng.normal(0, (1.0 / fan_in) ** 0.5, shape)
        elif len(shape) == 1 and node is not None and node.op_type == "Conv" and _is_head(node, consumers):
            values = rng.normal(0, 0.1, shape)
            no = shape[0] // 3  # 3 anchors per cell: [x, y, w, h, objectness, classes (, mask coefficients)]
            values[4::no] = objectness_bias
        else:
            values = rng.normal(0, 0.1, shape)
        tensor = numpy_helper.from_array(values.astype(dtype), init.name)
        init.CopyFrom(tensor)
    return model


def _is_head(conv: onnx.NodeProto, consumers: dict[str, onnx.NodeProto]) -> bool:
    """A detection head's conv: its output is reshaped to [B, anchors, no, H, W] right away."""
    nxt = consumers.get(conv.output[0])
    return nxt is not None and nxt.op_type == "Reshape"


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "strip":
        raise SystemExit(__doc__)
    print(strip(Path(sys.argv[2]), Path(sys.argv[3])))
