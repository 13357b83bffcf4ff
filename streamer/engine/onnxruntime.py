"""ONNX Runtime backend: the CPU default, the engine of every CI test, and the numerical reference."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from streamer.engine.base import Engine, EngineOptions, ModelSpec, resolve_input_size
from streamer.errors import EngineError, ModelError

log = logging.getLogger(__name__)


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model: Path, options: EngineOptions) -> None:
        if not model.is_file():
            raise ModelError(f"model file not found: {model}")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            so.intra_op_num_threads = options.threads
        # Idle worker threads sleep instead of spinning: in the daemon the decoders and the
        # pre/post-processing share the cores with inference, and spinning threads starve them.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if options.device.startswith("cuda") or options.device == "auto":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            elif options.device.startswith("cuda"):
                raise EngineError(
                    f"device {options.device!r} asked for, but this onnxruntime has no CUDA "
                    "execution provider (install onnxruntime-gpu)"
                )
        try:
            self._session = ort.InferenceSession(str(model), so, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"onnxruntime cannot load {model}: {exc}") from exc
        self.spec = self._inspect(model, options)
        self._output_name = self._session.get_outputs()[0].name
        log.info(
            "onnxruntime %s loaded %s on %s: input %dx%d, batch <= %d, %d classes",
            ort.__version__,
            model.name,
            self._session.get_providers()[0],
            self.spec.width,
            self.spec.height,
            self.spec.max_batch,
            self.spec.num_classes,
        )

    def _inspect(self, model: Path, options: EngineOptions) -> ModelSpec:
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelError(
                f"{model}: expected one NCHW image input, got {[(i.name, i.shape) for i in inputs]}"
            )
        inp = inputs[0]
        if inp.type != "tensor(float)":
            raise ModelError(f"{model}: input {inp.name!r} is {inp.type}, expected tensor(float)")
        batch_dim, channels, h_dim, w_dim = inp.shape
        if _static(channels) not in (None, 3):
            raise ModelError(f"{model}: input has {channels} channels, expected 3")
        model_hw = (_static(h_dim), _static(w_dim))
        height, width = resolve_input_size(model, model_hw, options)
        max_batch = _static(batch_dim) or options.max_batch
        if _static(batch_dim) and options.max_batch > max_batch:
            log.warning(
                "%s was exported with a fixed batch of %d; engine.max_batch %d is lowered to it",
                model.name,
                max_batch,
                options.max_batch,
            )
        max_batch = min(max_batch, options.max_batch)
        # Run once: learns the output layout (often dynamic in the graph) and warms the session up.
        out = self._session.run(None, {inp.name: np.zeros((1, 3, height, width), np.float32)})[0]
        if out.ndim != 3 or out.shape[2] < 6:
            raise ModelError(
                f"{model}: output shape {out.shape} is not the YOLOv7 --grid layout "
                "[batch, boxes, 5 + classes]"
            )
        return ModelSpec(inp.name, height, width, max_batch, int(out.shape[2]), int(out.shape[1]))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            out = self._session.run([self._output_name], {self.spec.input_name: batch})[0]
        except Exception as exc:
            raise EngineError(f"onnxruntime inference failed: {exc}") from exc
        return np.asarray(out)
