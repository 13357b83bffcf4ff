"""cuda-python's runtime API, found under either of its module names, and its error checking.

Shared by the CUDA executor and the TensorRT backend; imported only on the GPU path.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from streamer.errors import EngineError


@functools.cache
def load_cudart() -> Any:
    """``cuda.bindings.runtime`` (cuda-python >= 12.6) or ``cuda.cudart`` (older releases)."""
    try:
        return importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        try:
            return importlib.import_module("cuda.cudart")
        except ImportError as exc:
            raise EngineError(
                f"the GPU path needs cuda-python ({exc}): pip install 'yolostream[gpu]'"
            ) from exc


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python ``(err, value...)`` result; raise EngineError naming `what` on failure."""
    cudart = load_cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise EngineError(f"CUDA {what} failed: {cudart.cudaGetErrorName(err)[1].decode()}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)
