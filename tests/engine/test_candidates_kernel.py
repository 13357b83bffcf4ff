"""The GPU candidate filter's kernel compiles with NVRTC and its launch arguments are packed as declared
(no GPU needed; skipped without cuda-python and the NVRTC library). Its results are checked on the GPU
host by tests/engine/test_cuda_executor.py."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from tests.support.cuda import nvrtc_or_skip


def test_the_candidate_kernel_compiles_for_hopper_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvrtc_or_skip()
    monkeypatch.setenv("YOLOSTREAM_CACHE", str(tmp_path))
    from streamer.engine.candidates import compile_cubin

    cubin = compile_cubin("sm_90")
    assert cubin[:4] == b"\x7fELF"
    (cached,) = (tmp_path / "kernels").glob("grid_candidates-*-sm_90.cubin")
    assert cached.read_bytes() == cubin == compile_cubin("sm_90")


def test_the_candidate_kernel_arguments_are_read_back_where_the_driver_looks() -> None:
    from streamer.cuda.nvrtc import LaunchArgs
    from streamer.engine.candidates import _ARG_TYPES

    values = (2**40 + 8, 25200, 85, 0.25, 2048, 2**41, 2**42, 2**43)
    args = LaunchArgs(_ARG_TYPES)
    args.fill(values)
    pointers = (ctypes.c_void_p * len(values)).from_address(args.address)
    for pointer, kind, value in zip(pointers, _ARG_TYPES, values, strict=True):
        got = ctypes.cast(pointer, ctypes.POINTER(kind)).contents.value
        assert got == (pytest.approx(value) if kind is ctypes.c_float else value)
