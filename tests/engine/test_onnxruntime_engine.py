"""The ONNX Runtime engine on models the tests write: the model spec it reads, inference on the oracle
model, and the errors for missing, broken and unsuitable models and unknown backends."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from streamer.engine import EngineOptions, load_engine
from streamer.engine.onnxruntime import OnnxRuntimeEngine
from streamer.errors import EngineError, ModelError
from tests.support.models import write_oracle_model

IN_H, IN_W = 96, 128  # small, and not square: height and width cannot be swapped unnoticed


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    return write_oracle_model(folder / "oracle.onnx", input_size=(IN_H, IN_W), box_size=(20, 10), class_id=2)


def write_tiny_model(
    path: Path,
    *,
    batch: str | int = "batch",
    height: str | int = "height",
    width: str | int = "width",
    channels: int = 3,
    input_type: int = TensorProto.FLOAT,
    output: str = "rows",
) -> Path:
    """A graph that works for any input size: the per-channel means, laid out as asked.

    `output`: ``"rows"`` gives ``[B, 1, 2 * channels]`` (a valid layout for 3 channels: 6 columns),
    ``"flat"`` gives ``[B, 2 * channels]`` (rank 2), ``"narrow"`` ``[B, 1, channels]`` (too few columns).
    """
    nodes = [
        helper.make_node("Cast", ["images"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[2, 3], keepdims=0),  # [B, C]
    ]
    if output == "narrow":
        nodes.append(helper.make_node("Unsqueeze", ["mean", "axis1"], ["output"]))
        cols = channels
    else:
        nodes.append(helper.make_node("Concat", ["mean", "mean"], ["twice"], axis=1))  # [B, 2C]
        cols = 2 * channels
        if output == "rows":
            nodes.append(helper.make_node("Unsqueeze", ["twice", "axis1"], ["output"]))
        else:
            nodes.append(helper.make_node("Identity", ["twice"], ["output"]))
    out_shape = [batch, cols] if output == "flat" else [batch, 1, cols]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", input_type, [batch, channels, height, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        initializer=[helper.make_tensor("axis1", TensorProto.INT64, [1], [1])],
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="yolostream-tests")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _spot_batch(spots: list[tuple[int, int]], h: int = IN_H, w: int = IN_W) -> tuple[np.ndarray, list]:
    """One image per spot: black with a 3×3 white square whose top-left pixel is `spot` (x, y).

    Returns the batch and each square's centre in the continuous convention (pixel x covers [x, x+1)).
    """
    batch = np.zeros((len(spots), 3, h, w), np.float32)
    for i, (x, y) in enumerate(spots):
        batch[i, :, y : y + 3, x : x + 3] = 1.0
    return batch, [(x + 1.5, y + 1.5) for x, y in spots]


def test_the_spec_of_a_static_model_comes_from_the_model(oracle: Path) -> None:
    with load_engine("onnxruntime", oracle, EngineOptions(device="cpu", max_batch=3)) as engine:
        assert isinstance(engine, OnnxRuntimeEngine)
        assert engine.name == "onnxruntime"
        spec = engine.spec
        assert (spec.input_name, spec.height, spec.width) == ("images", IN_H, IN_W)
        assert (spec.max_batch, spec.boxes, spec.outputs_per_box, spec.num_classes) == (3, 1, 85, 80)


def test_auto_picks_onnxruntime(oracle: Path) -> None:
    engine = load_engine("auto", oracle, EngineOptions(device="cpu"))
    assert engine.name == "onnxruntime"
    engine.close()


def test_a_matching_input_size_is_accepted(oracle: Path) -> None:
    engine = load_engine("onnxruntime", oracle, EngineOptions(device="cpu", input_size=(IN_H, IN_W)))
    assert (engine.spec.height, engine.spec.width) == (IN_H, IN_W)


@pytest.mark.parametrize(
    ("input_size", "axis", "have", "want"),
    [((IN_H, IN_W + 32), "width", IN_W, IN_W + 32), ((IN_H + 32, IN_W), "height", IN_H, IN_H + 32)],
)
def test_an_input_size_that_contradicts_the_model_is_a_model_error(
    oracle: Path, input_size: tuple[int, int], axis: str, have: int, want: int
) -> None:
    with pytest.raises(ModelError, match=f"input {axis} is {have}.*asks for {want}"):
        load_engine("onnxruntime", oracle, EngineOptions(device="cpu", input_size=input_size))


def test_dynamic_input_dims_take_the_configured_size_or_640(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "dynamic.onnx")
    engine = load_engine("onnxruntime", model, EngineOptions(device="cpu", input_size=(64, 96)))
    assert (engine.spec.height, engine.spec.width, engine.spec.boxes, engine.spec.outputs_per_box) == (
        64,
        96,
        1,
        6,
    )
    out = engine.infer(np.full((2, 3, 64, 96), 0.25, np.float32))
    np.testing.assert_allclose(out, np.full((2, 1, 6), 0.25), atol=1e-6)

    default = load_engine("onnxruntime", model, EngineOptions(device="cpu"))
    assert (default.spec.height, default.spec.width) == (640, 640)


def test_one_dynamic_axis_takes_the_default_and_the_static_one_stays(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "half.onnx", height=320)
    engine = load_engine("onnxruntime", model, EngineOptions(device="cpu"))
    assert (engine.spec.height, engine.spec.width) == (320, 640)


def test_a_static_batch_of_one_lowers_max_batch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = write_oracle_model(tmp_path / "b1.onnx", input_size=(IN_H, IN_W), dynamic_batch=False)
    with caplog.at_level(logging.WARNING, logger="streamer.engine.model_info"):
        engine = load_engine("onnxruntime", model, EngineOptions(device="cpu", max_batch=8))
    assert engine.spec.max_batch == 1
    assert "fixed batch of 1" in caplog.text
    batch, centres = _spot_batch([(40, 30)])
    out = engine.infer(batch)
    assert out.shape == (1, 1, 85)
    np.testing.assert_allclose(out[0, 0, :2], centres[0], atol=1e-3)


def test_infer_puts_the_box_on_the_bright_spot(oracle: Path) -> None:
    engine = load_engine("onnxruntime", oracle, EngineOptions(device="cpu", max_batch=4, threads=1))
    spots = [(10, 20), (100, 5), (60, 80)]
    batch, centres = _spot_batch(spots)
    out = engine.infer(batch)
    assert out.shape == (3, 1, 85) and out.dtype == np.float32
    for row, (cx, cy) in zip(out[:, 0], centres, strict=True):
        np.testing.assert_allclose(row[:5], (cx, cy, 20, 10, 1.0), atol=1e-3)
        assert int(np.argmax(row[5:])) == 2
    # One image alone gives the same row as within the batch.
    np.testing.assert_allclose(engine.infer(batch[1:2])[0], out[1], atol=1e-5)


def test_infer_with_the_wrong_shape_is_an_engine_error(oracle: Path) -> None:
    engine = load_engine("onnxruntime", oracle, EngineOptions(device="cpu"))
    with pytest.raises(EngineError, match="inference failed"):
        engine.infer(np.zeros((1, 3, IN_H, IN_W + 1), np.float32))


def test_a_missing_model_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.onnx"
    with pytest.raises(ModelError, match=f"not found: {path}"):
        load_engine("onnxruntime", path, EngineOptions(device="cpu"))


def test_a_file_that_is_not_onnx_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not a protobuf\x00\xff" * 50)
    with pytest.raises(ModelError, match=f"cannot read ONNX model {path}"):
        load_engine("onnxruntime", path, EngineOptions(device="cpu"))


def test_an_unknown_backend_is_an_engine_error_listing_the_available_ones(oracle: Path) -> None:
    with pytest.raises(EngineError, match=r"'openvino' is not available.*onnxruntime, tensorrt, torch"):
        load_engine("openvino", oracle, EngineOptions())


@pytest.mark.parametrize("output", ["flat", "narrow"])
def test_an_output_that_is_not_the_yolo_layout_is_a_model_error(tmp_path: Path, output: str) -> None:
    model = write_tiny_model(tmp_path / f"{output}.onnx", height=32, width=32, output=output)
    with pytest.raises(ModelError, match="not a YOLOv7 ONNX layout yolostream knows"):
        load_engine("onnxruntime", model, EngineOptions(device="cpu"))


def test_an_input_that_is_not_an_rgb_float_image_is_a_model_error(tmp_path: Path) -> None:
    gray = write_tiny_model(tmp_path / "gray.onnx", channels=1, output="rows")
    with pytest.raises(ModelError, match="1 channels, expected 3"):
        load_engine("onnxruntime", gray, EngineOptions(device="cpu"))
    uint8 = write_tiny_model(tmp_path / "uint8.onnx", input_type=TensorProto.UINT8)
    with pytest.raises(ModelError, match=r"'images' is uint8, expected float32"):
        load_engine("onnxruntime", uint8, EngineOptions(device="cpu"))


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA"
)
def test_asking_for_cuda_without_the_cuda_provider_is_an_engine_error(oracle: Path) -> None:
    with pytest.raises(EngineError, match="onnxruntime-gpu"):
        load_engine("onnxruntime", oracle, EngineOptions(device="cuda:0"))


def test_a_precision_onnxruntime_does_not_apply_is_said_in_the_log(
    oracle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from streamer.config import parse_config
    from streamer.engine.select import open_executor

    text = (
        f"model:\n  onnx: {oracle}\nengine:\n  backend: onnxruntime\n  precision: fp16\n"
        "sources:\n  - id: a\n    url: a.mp4\n"
    )
    cfg = parse_config(text, base_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="streamer.engine.select"):
        executor = open_executor(cfg, oracle)
    executor.close()
    assert "engine.precision fp16 is not applied by onnxruntime" in caplog.text
