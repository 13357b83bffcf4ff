"""The torch backend (onnx2torch) against ONNX Runtime, on models the tests write; the fp16→fp32 widening.

Skips without PyTorch (the ``parity`` extra installs it); the widening tests need only `onnx`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamer.engine import EngineOptions, load_engine
from streamer.engine.onnxgraph import expose_outputs, fp16_nodes, widen_to_fp32
from streamer.errors import EngineError
from tests.support.defects import chain_model
from tests.support.models import write_oracle_model


def _needs_torch() -> None:
    pytest.importorskip("torch")
    if importlib.util.find_spec("onnx2torch") is None:
        pytest.skip("onnx2torch is not installed (the parity extra has it)")


def _fp16_chain(path: Path) -> Path:
    """The conv chain stored as a float16 graph with float32 input and output (like yolov7-coco.onnx)."""
    model = onnx.load(str(chain_model(path.with_suffix(".fp32.onnx"), layers=3, channels=6, size=32)))
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    g = model.graph
    g.node[0].input[0] = "images_fp16"
    g.node.insert(0, helper.make_node("Cast", ["images"], ["images_fp16"], to=TensorProto.FLOAT16))
    last = g.node[-1]
    last.output[0] = "output_fp16"
    g.node.append(helper.make_node("Cast", ["output_fp16"], ["output"], to=TensorProto.FLOAT))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _ort(model: Path | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


def test_widen_to_fp32(tmp_path: Path) -> None:
    stored = onnx.load(str(_fp16_chain(tmp_path / "half.onnx")))
    assert fp16_nodes(stored) == 3 * 2 + 1  # 3 weights, 3 biases, one Cast to fp16
    wide = widen_to_fp32(stored)
    assert fp16_nodes(wide) == 0 and fp16_nodes(stored) == 7  # a copy: the original is untouched
    onnx.checker.check_model(wide, full_check=True)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    half, full = _ort(stored, x), _ort(wide, x)
    assert 0 < np.abs(half - full).max() < 1e-2  # fp16 rounding between layers, gone in the copy
    w16 = numpy_helper.to_array(stored.graph.initializer[0])
    w32 = numpy_helper.to_array(wide.graph.initializer[0])
    assert w32.dtype == np.float32 and np.array_equal(w32, w16.astype(np.float32))


def test_expose_outputs_keeps_the_output_first(tmp_path: Path) -> None:
    model = onnx.load(str(chain_model(tmp_path / "c.onnx", layers=2)))
    exposed = expose_outputs(model, ["c0", "a1", "output"])
    assert [o.name for o in exposed.graph.output] == ["output", "c0", "a1"]
    assert [o.name for o in model.graph.output] == ["output"]


def test_matches_onnxruntime_on_the_oracle(tmp_path: Path) -> None:
    _needs_torch()
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(96, 128), box_size=(20, 10))
    options = EngineOptions(device="cpu", max_batch=2)
    with (
        load_engine("torch", model, options) as torch_engine,
        load_engine("onnxruntime", model, options) as ref,
    ):
        assert torch_engine.spec == ref.spec
        x = np.full((2, 3, 96, 128), 16 / 255, np.float32)
        x[0, :, 40:46, 70:76] = 1.0
        x[1, :, 10:14, 5:9] = 1.0
        out, expected = torch_engine.infer(x), ref.infer(x)
    assert out.dtype == np.float32 and out.shape == (2, 1, 85)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert out[0, 0, 0] == pytest.approx(73.0, abs=0.01) and out[1, 0, 1] == pytest.approx(12.0, abs=0.01)


def test_runs_an_fp16_graph_in_fp32(tmp_path: Path) -> None:
    _needs_torch()
    model = _fp16_chain(tmp_path / "half.onnx")
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    with load_engine("torch", model, EngineOptions(device="cpu", max_batch=1)) as engine:
        out = engine.infer(x)
    np.testing.assert_allclose(out, _ort(widen_to_fp32(onnx.load(str(model))), x), atol=1e-5)


def test_scatter_nd_is_vectorised_and_exact() -> None:
    """yolov7's grid export writes decoded boxes back with ScatterND: the replacement converter."""
    _needs_torch()
    import torch

    from streamer.engine.torch import _import_onnx2torch

    onnx2torch = _import_onnx2torch()
    rng = np.random.default_rng(0)
    # (not a box of the data: columns 1, 0 swapped, so the general converter runs, not the slice assignment
    # of folded graphs in `streamer.engine.torch_static`)
    indices = np.stack(
        np.meshgrid(np.arange(2), np.arange(5), np.arange(7), np.array([1, 0]), indexing="ij"), -1
    )
    updates = rng.random((2, 5, 7, 2), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("ScatterND", ["data", "indices", "updates"], ["out"], name="scatter")],
        "scatter",
        [
            helper.make_tensor_value_info("data", TensorProto.FLOAT, [2, 5, 7, 9]),
            helper.make_tensor_value_info("updates", TensorProto.FLOAT, [2, 5, 7, 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 5, 7, 9])],
        initializer=[numpy_helper.from_array(indices.astype(np.int64), "indices")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = rng.random((2, 5, 7, 9), dtype=np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"data": data, "updates": updates})[0]
    module = onnx2torch.convert(model)
    assert type(module.get_submodule("scatter")).__name__ == "ScatterND"
    assert type(module.get_submodule("scatter")).__module__ == "streamer.engine.torch"
    with torch.inference_mode():
        out = module(torch.from_numpy(data), torch.from_numpy(updates)).numpy()
    np.testing.assert_array_equal(out, expected)


def test_fp16_and_missing_cuda_are_clear_errors(tmp_path: Path) -> None:
    _needs_torch()
    import torch

    model = write_oracle_model(tmp_path / "oracle.onnx")
    with pytest.raises(EngineError, match="precision 'fp16' is not supported yet"):
        load_engine("torch", model, EngineOptions(device="cpu", precision="fp16"))
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA GPU"):
            load_engine("torch", model, EngineOptions(device="cuda"))
