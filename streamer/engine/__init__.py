"""Inference backends behind one small interface, loaded by name and lazily.

Only the inference worker imports a backend module, so the supervisor and a CPU-only install never
import TensorRT, torch or CUDA.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.engine.base import Engine, EngineOptions, ModelSpec
from streamer.errors import EngineError

if TYPE_CHECKING:
    from streamer.engine.model_info import ModelInfo

__all__ = ["Engine", "EngineOptions", "ModelSpec", "load_engine"]

log = logging.getLogger(__name__)

# backend name -> module:class of its synchronous engine (`select.open_executor` picks device engines).
_BACKENDS = {
    "onnxruntime": "streamer.engine.onnxruntime:OnnxRuntimeEngine",
    "torch": "streamer.engine.torch:TorchEngine",
    "tensorrt": "streamer.engine.tensorrt:TensorRTEngine",
}


def load_engine(backend: str, model: Path, options: EngineOptions, info: ModelInfo | None = None) -> Engine:
    """Load `model` with `backend` (``auto`` picks the best available) and return the ready engine.

    `info`: the model as `model_info.inspect_model` read it, when the caller has it already.
    """
    if backend == "auto":
        # The synchronous (CPU-side) engines; `streamer.engine.select` resolves auto for the daemon.
        backend = "onnxruntime"
    target = _BACKENDS.get(backend)
    if target is None:
        raise EngineError(
            f"engine backend {backend!r} is not available in this build "
            f"(available: {', '.join(sorted(_BACKENDS))})"
        )
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineError(f"engine backend {backend!r} needs a package that is not installed: {exc}") from exc
    engine_cls: Callable[..., Engine] = getattr(module, cls_name)
    return engine_cls(model, options, info=info)
