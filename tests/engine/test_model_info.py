"""The model read once (`inspect_model`) and handed to the backends: what it settles, and what it refuses
before a backend converts, compiles or builds anything."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamer.engine import EngineOptions, load_engine
from streamer.engine.device import OutputLayout, TensorSpec
from streamer.engine.executor import CpuExecutor
from streamer.engine.model_info import inspect_model
from streamer.errors import ModelError
from tests.engine.test_layout import efficient_nms_model
from tests.support.models import write_oracle_model


def _end2end_file(path: Path) -> Path:
    """yolov7's --end2end (EfficientNMS_TRT) graph, fed from a 64×64 image input (the raw head = its first
    1,700 values) so that it has the one NCHW input a real export has."""
    model = efficient_nms_model()
    graph = model.graph
    raw = next(i for i in graph.input if i.name == "raw")
    graph.input.remove(raw)
    graph.initializer.extend(
        numpy_helper.from_array(np.array(v, np.int64), name)
        for name, v in (("flat", [0, -1]), ("f0", [0]), ("f1", [1700]), ("fax", [1]), ("grid", [0, 20, 85]))
    )
    head = [
        helper.make_node("Reshape", ["images", "flat"], ["images_flat"]),
        helper.make_node("Slice", ["images_flat", "f0", "f1", "fax"], ["head"]),
        helper.make_node("Reshape", ["head", "grid"], ["raw"]),
    ]
    for i, node in enumerate(head):
        graph.node.insert(i, node)
    onnx.save(model, str(path))
    return path


def test_inspect_model_settles_input_size_batch_and_layout(tmp_path: Path) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(64, 96), num_classes=3)
    info = inspect_model(model, EngineOptions(max_batch=6))
    assert (info.input.name, info.height, info.width, info.max_batch) == ("images", 64, 96, 6)
    assert info.dynamic_batch and info.layout is OutputLayout.GRID and info.num_classes == 3
    assert info.outputs == (TensorSpec("output", "float32", (-1, 1, 8)),)
    assert info.any_batch(32).max_batch == 32


def test_the_config_input_size_must_agree_with_a_static_model(tmp_path: Path) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(64, 96))
    with pytest.raises(
        ModelError, match=r"input height is 64, but the config.s model\.input_size asks for 640"
    ):
        inspect_model(model, EngineOptions(input_size=(640, 640)))


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_a_backend_that_runs_only_grid_models_refuses_an_end2end_one_by_name(
    tmp_path: Path, backend: str
) -> None:
    model = _end2end_file(tmp_path / "end2end.onnx")
    assert inspect_model(model, EngineOptions()).layout is OutputLayout.EFFICIENT_NMS
    with pytest.raises(ModelError, match=f"the {backend} backend runs yolov7's --grid export.*efficient_nms"):
        load_engine(backend, model, EngineOptions(device="cpu"))


def test_a_model_exported_with_a_fixed_batch_runs_partial_batches_padded_to_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = write_oracle_model(tmp_path / "b2.onnx", input_size=(32, 32), dynamic_batch=False, fixed_batch=2)
    with caplog.at_level(logging.WARNING, logger="streamer.engine.model_info"):
        engine = load_engine("onnxruntime", model, EngineOptions(device="cpu", max_batch=8))
    assert "fixed batch of 2" in caplog.text and "engine.max_batch 8 does not apply" in caplog.text
    assert (engine.spec.max_batch, engine.spec.fixed_batch) == (2, True)
    executor = CpuExecutor(engine, slots=1, owns_engine=True)
    try:
        slot = executor.free_slot()
        assert slot is not None
        image = executor.host_input(slot)
        image[...] = 16.0
        image[0, :, 10:14, 20:24] = 255.0  # a bright spot in the one real image
        executor.submit(slot, ["only"])
        done = executor.done(timeout=60)
        assert done is not None
        (out,) = done[1].tensors.values()
        assert out.shape[0] == 1  # one row for one image: the padding row is not returned
        np.testing.assert_allclose(out[0, 0, :2], (22.0, 12.0), atol=0.5)
    finally:
        executor.close()


def test_a_missing_or_broken_file_is_a_model_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"model file not found: {tmp_path / 'absent.onnx'}"):
        inspect_model(tmp_path / "absent.onnx", EngineOptions())
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xffnot onnx" * 40)
    with pytest.raises(ModelError, match=f"cannot read ONNX model {junk}"):
        inspect_model(junk, EngineOptions())


def test_an_integer_image_input_is_refused_naming_its_type(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["output"])],
        "u8",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 20, 85])],
    )
    path = tmp_path / "u8.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ModelError, match="'images' is uint8, expected float32"):
        inspect_model(path, EngineOptions())
