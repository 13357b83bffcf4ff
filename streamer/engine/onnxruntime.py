"""ONNX Runtime backend: the CPU default, the engine of every CI test, and the numerical reference."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from streamer.engine.base import Engine, EngineOptions, ModelSpec
from streamer.engine.model_info import ModelInfo, inspect_model
from streamer.errors import EngineError, ModelError

log = logging.getLogger(__name__)


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"

    def __init__(self, model: Path, options: EngineOptions, *, info: ModelInfo | None = None) -> None:
        info = info or inspect_model(model, options)
        info.require_grid(self.name)
        info.warn_if_batch_fixed(options)
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
        self.spec = self._spec(info)
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

    def _spec(self, info: ModelInfo) -> ModelSpec:
        # Run once: the box count is often dynamic in the graph, and the session warms up.
        zeros = np.zeros(
            (info.max_batch if not info.dynamic_batch else 1, 3, info.height, info.width), np.float32
        )
        out = self._session.run(None, {info.input.name: zeros})[0]
        if out.ndim != 3 or out.shape[2] < 6:
            raise ModelError(
                f"{info.path}: output shape {out.shape} is not the YOLOv7 --grid layout "
                "[batch, boxes, 5 + classes]"
            )
        return ModelSpec(
            info.input.name, info.height, info.width, info.max_batch, int(out.shape[2]), int(out.shape[1]),
            fixed_batch=not info.dynamic_batch,
        )  # fmt: skip

    def infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            out = self._session.run([self._output_name], {self.spec.input_name: batch})[0]
        except Exception as exc:
            raise EngineError(f"onnxruntime inference failed: {exc}") from exc
        return np.asarray(out)
