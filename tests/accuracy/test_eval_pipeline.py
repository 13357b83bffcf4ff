"""`streamer.accuracy.eval_pipeline`: the accuracy tools open and drive the engine as the daemon does.

The GPU side (the CUDA kernel into the device input, fp16) runs on the GPU host (benchmarks/gpu_session.sh
stage ``eval-gpu``); here: the CPU executor, the overrides, the NV12 conversion that feeds the kernel
for images (checked through the kernel's NumPy model, which the kernel equals bit for bit), the errors.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from streamer.accuracy.eval_pipeline import (
    Overrides,
    PipelineError,
    deployed_config,
    open_pipeline,
    rgb_to_nv12,
)
from streamer.config import parse_config
from streamer.errors import EngineError
from streamer.postprocess.nms import NmsParams
from streamer.preprocess import letterbox, to_input_tensor
from streamer.preprocess.nv12 import YuvCoefficients, letterbox_nv12
from tests.support.media import draw_disc
from tests.support.models import write_oracle_model


def _config(model: Path, tmp_path: Path, engine: str = "  max_batch: 2\n") -> Any:
    text = f"model:\n  onnx: {model}\nengine:\n{engine}sources:\n  - id: x\n    url: x.mp4\n"
    return parse_config(text, base_dir=tmp_path)


def _smooth_picture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Colour gradients and blurred texture: little detail at the chroma's half resolution."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 220 + 20, yy / h * 200 + 30, (xx + yy) / (w + h) * 180 + 40], axis=-1)
    img += rng.normal(0, 3, img.shape)
    return cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.uint8), (0, 0), 3)


@pytest.mark.parametrize("size", [(640, 480), (333, 211), (500, 375), (1280, 720)])
def test_images_as_nv12_letterbox_like_the_rgb_path(size: tuple[int, int]) -> None:
    """What the CUDA kernel is given for an image (RGB → NV12 BT.601 limited, odd sizes padded) comes back
    through the kernel's arithmetic within a level or so of the CPU letterbox (the rest is swscale's
    truncating YUV → RGB, which PyAV's decoded frames have too: about -1 level on average)."""
    w, h = size
    rgb = _smooth_picture(w, h)
    y, uv, pitch = rgb_to_nv12(rgb)
    assert y.shape == (h, pitch) and uv.shape == ((h + 1) // 2, pitch) and pitch % 2 == 0 and pitch >= w
    kernel_model, g = letterbox_nv12(y, uv, w, h, 640, 640, YuvCoefficients.for_stream("bt601"))
    reference = to_input_tensor(letterbox(rgb, 640, 640)[0], swap_rb=False)
    inner = (slice(None), slice(g.top, g.top + g.new_h), slice(g.left, g.left + g.new_w))
    diff = np.abs(kernel_model[inner] - reference[inner]) * 255
    assert diff.mean() < 1.5 and diff.max() <= 6, (diff.mean(), diff.max())
    assert np.array_equal(kernel_model[:, : g.top], reference[:, : g.top])  # the same padding


def test_overrides_replace_the_config_and_the_filter_takes_the_tools_threshold(tmp_path: Path) -> None:
    cfg = _config(tmp_path / "m.onnx", tmp_path, "  backend: onnxruntime\n  precision: fp32\n")
    run = deployed_config(cfg, Overrides(backend="torch", precision="fp16", compile="on"), conf=0.001)
    assert (run.engine.backend, run.engine.precision, run.engine.compile) == ("torch", "fp16", "on")
    assert run.detection.confidence == 0.001 and run.engine.max_batch == cfg.engine.max_batch
    assert cfg.engine.backend == "onnxruntime"  # the config itself is unchanged


def test_batches_keep_the_frames_in_order(tmp_path: Path) -> None:
    """Five frames through a 2-slot executor at batch 2 (the daemon's): one result per frame, in order,
    each box on its frame's spot in source pixels."""
    model = write_oracle_model(tmp_path / "oracle.onnx")
    spots = [(100.5 + 40 * k, 200.5 - 20 * k) for k in range(5)]
    frames = []
    for k, spot in enumerate(spots):
        img = np.full((360, 640, 3), 16, np.uint8)
        frames.append((f"f{k}", draw_disc(img, spot, 10)))
    pipe = open_pipeline(_config(model, tmp_path), model, NmsParams(conf_thres=0.25, iou_thres=0.45))
    with pipe:
        assert pipe.setup.backend == "onnxruntime" and pipe.setup.preprocess == "cpu"
        assert "CpuExecutor" in pipe.setup.describe() and pipe.executor.spec.max_batch == 2
        results = list(pipe.run(frames))
    assert [key for key, _, _ in results] == [f"f{k}" for k in range(5)]
    for (_, dets, raw), (cx, cy) in zip(results, spots, strict=True):
        assert raw is None and len(dets) == 1
        x1, y1, x2, y2 = dets[0, :4]
        assert abs((x1 + x2) / 2 - cx) < 0.5 and abs((y1 + y2) / 2 - cy) < 0.5


def test_cuda_preprocessing_needs_an_engine_on_the_gpu(tmp_path: Path) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx")
    cfg = _config(model, tmp_path, "  device: cpu\n")
    with pytest.raises(PipelineError, match="--preprocess cuda needs an engine on the GPU"):
        open_pipeline(cfg, model, NmsParams(), Overrides(preprocess="cuda"))
    with pytest.raises(PipelineError, match="unknown preprocessing 'gpu'"):
        open_pipeline(cfg, model, NmsParams(), Overrides(preprocess="gpu"))


def test_fp16_on_the_cpu_torch_engine_is_refused_clearly(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    if importlib.util.find_spec("onnx2torch") is None:  # (importing it may need the engine's torchvision fix)
        pytest.skip("onnx2torch is not installed (the parity extra has it)")
    model = write_oracle_model(tmp_path / "oracle.onnx")
    cfg = _config(model, tmp_path, "  device: cpu\n")
    with pytest.raises(EngineError, match="precision 'fp16'"):
        open_pipeline(cfg, model, NmsParams(), Overrides(backend="torch", precision="fp16"))


def test_the_gpu_index_is_read_from_the_config_and_the_header() -> None:
    from streamer.accuracy.eval_pipeline import _gpu_index

    assert [_gpu_index(d) for d in ("cuda:3", "cuda:1 (NVIDIA H200)", "cuda", "auto")] == [3, 1, 0, 0]
