"""Skips for tests of the GPU path: those that need cuda-python and NVRTC but no GPU, and those that need a
CUDA GPU with torch."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest


def nvrtc_or_skip() -> None:
    """Skip unless cuda-python and the NVRTC library are usable (NVRTC compiles without a GPU)."""
    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python is not installed (pip install 'yolostream[gpu]')")
    try:
        from cuda.bindings import nvrtc

        nvrtc.nvrtcVersion()
    except Exception as exc:  # the NVRTC library (nvidia-cuda-nvrtc) missing: anything may be raised
        pytest.skip(f"NVRTC is not usable here: {exc}")


def cuda_torch_or_skip() -> Any:
    """torch, or a skip unless it sees a CUDA GPU and cuda-python and onnx2torch are installed."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    for package in ("cuda", "onnx2torch"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (pip install 'yolostream[gpu]')")
    return torch
