"""The batch-generic conversion of folded graphs (`streamer.engine.torch_static`) on the CPU.

A graph folded at batch 1 and made batch-generic must compute, at other batch sizes, what ONNX Runtime
computes on the original graph: on the oracle model (always), and on the real YOLOv7 and YOLOv5s graphs
when ``../shared/models`` has them. A batch-dependent constant that cannot be explained is refused.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from streamer.engine.onnxgraph import widen_to_fp32
from streamer.engine.torch_static import NotBatchGeneric, any_batch, convert_any_batch, scatter_box
from tests.support.models import write_oracle_model
from tests.support.paths import SHARED

MODELS = SHARED / "models"


def _needs_torch() -> None:
    pytest.importorskip("torch")
    if importlib.util.find_spec("onnx2torch") is None:
        pytest.skip("onnx2torch is not installed (the parity extra has it)")


def test_scatter_box_finds_dense_boxes_only() -> None:
    full = np.stack(np.meshgrid(np.arange(2), np.arange(3), np.arange(5), indexing="ij"), -1)
    assert scatter_box(full) == ((0, 2), (0, 3), (0, 5))
    assert scatter_box(full + np.array([0, 1, 2])) == ((0, 2), (1, 4), (2, 7))
    assert scatter_box(full[:, :, ::-1]) is None  # reversed: not a box in order
    assert scatter_box(full[..., :2]) is None  # indices of rank 2 for a 3-d grid of updates


def _compare(model: Path, batches: tuple[int, ...], atol: float) -> None:
    import torch

    module = convert_any_batch(model).eval()
    reference = ort.InferenceSession(
        widen_to_fp32(onnx.load(str(model))).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    name = reference.get_inputs()[0].name
    rng = np.random.default_rng(0)
    for n in batches:
        x = rng.random((n, 3, 640, 640), dtype=np.float32)
        with torch.inference_mode():
            y = module(torch.from_numpy(x))
        got = (y[0] if isinstance(y, (tuple, list)) else y).numpy()
        want = reference.run(None, {name: x})[0]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=atol, rtol=1e-4)


def test_the_oracle_folded_at_batch_1_runs_at_batch_3(tmp_path: Path) -> None:
    _needs_torch()
    import torch

    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(96, 128))
    module = convert_any_batch(model).eval()
    x = np.full((3, 3, 96, 128), 16 / 255, np.float32)
    for i, (y, x0) in enumerate(((40, 70), (10, 5), (80, 100))):
        x[i, :, y : y + 6, x0 : x0 + 6] = 1.0
    want = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    with torch.inference_mode():
        got = module(torch.from_numpy(x))
    got = (got[0] if isinstance(got, (tuple, list)) else got).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("name", ["yolov5s-coco.onnx", "yolov7-coco.onnx"])
def test_real_graphs_folded_at_batch_1_run_at_other_batch_sizes(name: str) -> None:
    _needs_torch()
    model = MODELS / name
    if not model.is_file():
        pytest.skip(f"{model} is not here (the shared models are not part of a fresh clone)")
    folded = any_batch(model)
    # yolov7's ScatterND writes y[..., :85] back: a box over the whole batch, marked for the converter
    marked = [
        n for n in folded.graph.node if n.op_type == "ScatterND" and n.attribute[-1].name == "yolostream_box"
    ]
    assert len(marked) == (3 if name.startswith("yolov7") else 0)
    # one batch other than 1 shows the conversion batch-generic; yolov7 costs ~10 s an image here on CI
    _compare(model, (2, 3) if name.startswith("yolov5") else (2,), atol=2e-3)


def test_a_constant_the_batch_size_does_not_explain_is_refused(tmp_path: Path) -> None:
    # out = x + zeros_like(x) built from Shape(x): folded, the zeros become a [batch, ...] constant
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
        helper.make_node("Add", ["images", "zeros"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 8, 8])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "zeros.onnx"
    onnx.save(model, str(path))
    with pytest.raises(NotBatchGeneric, match="depends on the batch size"):
        any_batch(path)
