"""cuda-python's runtime API, found under either of its module names, its error checking, and the two
kinds of memory yolostream allocates (pinned host arrays, device buffers).

Shared by the CUDA executor, the kernels, the frame rings and the TensorRT backend; imported only on the
GPU path.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
from typing import Any

import numpy as np

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


class PinnedArray:
    """A numpy array in page-locked host memory (fast, asynchronous copies to and from the GPU)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        cudart = load_cudart()
        self.nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.ptr = int(check(cudart.cudaHostAlloc(self.nbytes, cudart.cudaHostAllocDefault), "cudaHostAlloc"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=dtype).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            del self.array
            check(load_cudart().cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class DeviceArray:
    """Device memory for `shape` × `dtype` (owned; freed by close)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.ptr = int(check(load_cudart().cudaMalloc(self.nbytes), "cudaMalloc"))

    def close(self) -> None:
        if self.ptr:
            check(load_cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0
