"""Skips for tests of the GPU path that need cuda-python and NVRTC but no GPU."""

from __future__ import annotations

import importlib.util

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
