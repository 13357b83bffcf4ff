"""Planted defects, to check that `yolostream parity` catches what breaks real deployments.

`perturb_conv` writes a copy of an ONNX model in which one Conv's weights are scaled per output channel
as a wrong BatchNorm eps leaves them in a fused graph: folding ``BN(var, eps)`` into a conv multiplies
the weights of channel c by ``gamma_c / sqrt(var_c + eps)``, so folding with eps 1e-5 where the model
was trained with 1e-3 (yolov7's) scales channel c by ``sqrt((var_c + 1e-3) / (var_c + 1e-5))`` — 1.005
to 1.05 for running variances between 0.1 and 0.01.

`chain_model` writes a small float32 conv net (Conv → Sigmoid → Mul, SiLU as in YOLO, repeated) whose
layers a test can perturb one by one, with no downloaded weights.

Run as a script to plant the defect in a real model::

    python -m tests.support.defects MODEL.onnx OUT.onnx [--node NAME]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def bn_eps_factors(channels: int, seed: int = 0) -> np.ndarray:
    """Per-channel factors ``sqrt((var + 1e-3) / (var + 1e-5))`` for running variances in [0.01, 0.1]."""
    var = np.random.default_rng(seed).uniform(0.01, 0.1, channels)
    return np.sqrt((var + 1e-3) / (var + 1e-5))


def conv_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose weights are initializers, in graph order."""
    inits = {t.name for t in model.graph.initializer}
    return [
        n.name for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in inits
    ]


def perturb_conv(
    src: str | Path, dst: str | Path, node: str | None = None, seed: int = 0
) -> tuple[Path, str]:
    """Copy `src` to `dst` with the weights of Conv `node` (default: the middle one) scaled per output
    channel by `bn_eps_factors`. The weights keep their dtype (fp16 stays fp16). Returns (dst, node)."""
    model = onnx.load(str(src))
    names = conv_nodes(model)
    if not names:
        raise ValueError(f"{src} has no Conv with initializer weights")
    node = node or names[len(names) // 2]
    target = next((n for n in model.graph.node if n.name == node), None)
    if target is None or target.op_type != "Conv":
        raise ValueError(f"{src} has no Conv node named {node!r}")
    weight = next(t for t in model.graph.initializer if t.name == target.input[1])
    w = numpy_helper.to_array(weight)
    factors = bn_eps_factors(w.shape[0], seed).reshape(-1, *([1] * (w.ndim - 1)))
    scaled = (w.astype(np.float64) * factors).astype(w.dtype)
    weight.CopyFrom(numpy_helper.from_array(scaled, weight.name))
    onnx.save(model, str(dst))
    return Path(dst), node


def chain_model(
    path: str | Path, *, layers: int = 6, channels: int = 8, size: int = 32, seed: int = 0
) -> Path:
    """A float32 net ``images [batch, 3, size, size]`` → `layers` × (Conv 3×3 → Sigmoid → Mul) → ``output``.

    Nodes are named ``conv{i}``, ``sig{i}``, ``act{i}``; the output is the last activation, flattened to
    ``[batch, size*size, channels]`` (not a YOLO layout: for the layer-by-layer comparison only).
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, c_in = "images", 3
    for i in range(layers):
        w = rng.normal(0, 1 / np.sqrt(9 * c_in), (channels, c_in, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, channels).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
            helper.make_node("Sigmoid", [f"c{i}"], [f"s{i}"], name=f"sig{i}"),
            helper.make_node("Mul", [f"c{i}", f"s{i}"], [f"a{i}"], name=f"act{i}"),
        ]
        x, c_in = f"a{i}", channels
    inits.append(numpy_helper.from_array(np.array([0, channels, -1], np.int64), "shape"))
    nodes += [
        helper.make_node("Reshape", [x, "shape"], ["flat"], name="flatten"),
        helper.make_node("Transpose", ["flat"], ["output"], name="to_rows", perm=[0, 2, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", size * size, channels])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="yolostream-tests")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--node", help="the Conv to perturb (default: the middle one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path, node = perturb_conv(args.model, args.out, args.node, args.seed)
    print(f"{path}: weights of {node} scaled per output channel (wrong BatchNorm eps)")


if __name__ == "__main__":
    main()
