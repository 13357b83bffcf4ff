"""CUDA C++ kernels of yolostream's own: compiled with NVRTC, cached on disk, launched with the driver API.

`compile_cubin` compiles a kernel source for one GPU architecture (NVRTC needs no GPU, so it also runs on
a CPU machine with cuda-python and the NVRTC library) and caches the cubin under
``cache_dir()/kernels``, keyed by the source, the options, NVRTC's version and the architecture: later
start-ups only load it. `Kernel` loads a cubin in the current context (``cuModuleLoadData``) and launches
one of its functions on a stream (``cuLaunchKernel``) with its arguments held in one ctypes struct built
once (`LaunchArgs`): twenty NumPy scalars per launch cost 70 µs, more than the launch itself.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from streamer.cuda.runtime import check, load_cudart
from streamer.errors import EngineError
from streamer.paths import cache_dir

log = logging.getLogger(__name__)


def cuda_module(name: str) -> Any:
    """``cuda.bindings.<name>`` (cuda-python >= 12.6) or ``cuda.<name>``."""
    try:
        return importlib.import_module(f"cuda.bindings.{name}")
    except ImportError:
        try:
            return importlib.import_module(f"cuda.{name}")
        except ImportError as exc:
            raise EngineError(
                f"yolostream's CUDA kernels need cuda-python ({exc}): pip install 'yolostream[gpu]'"
            ) from exc


def _nvrtc_check(nvrtc: Any, result: Any, what: str, program: Any = None) -> Any:
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        detail = ""
        if program is not None:
            _, size = nvrtc.nvrtcGetProgramLogSize(program)
            buf = b" " * size
            nvrtc.nvrtcGetProgramLog(program, buf)
            detail = ":\n" + buf.decode(errors="replace")
        raise EngineError(f"NVRTC {what} failed ({err}){detail}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def driver_check(driver: Any, result: Any, what: str) -> Any:
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise EngineError(f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def compile_cubin(
    source: str, name: str, options: Sequence[str], arch: str, cache: Path | None = None
) -> bytes:
    """`source` compiled for `arch` (e.g. ``"sm_90"``), from the cache or by NVRTC (then cached)."""
    nvrtc = cuda_module("nvrtc")
    version = _nvrtc_check(nvrtc, nvrtc.nvrtcVersion(), "version")
    options = (*options, f"--gpu-architecture={arch}")
    key = hashlib.sha256(repr((source, options, version)).encode()).hexdigest()[:24]
    folder = cache if cache is not None else cache_dir() / "kernels"
    path = folder / f"{name}-{key}-{arch}.cubin"
    if path.is_file():
        return path.read_bytes()
    program = _nvrtc_check(
        nvrtc, nvrtc.nvrtcCreateProgram(source.encode(), f"{name}.cu".encode(), 0, [], []), "create"
    )
    try:
        _nvrtc_check(
            nvrtc,
            nvrtc.nvrtcCompileProgram(program, len(options), [o.encode() for o in options]),
            "compile",
            program,
        )
        size = _nvrtc_check(nvrtc, nvrtc.nvrtcGetCUBINSize(program), "cubin size")
        cubin = b" " * size
        _nvrtc_check(nvrtc, nvrtc.nvrtcGetCUBIN(program, cubin), "get cubin")
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cubin)
    tmp.replace(path)  # atomic: several inference workers may compile at once
    log.info("compiled the %s kernel for %s with NVRTC %s.%s (%s)", name, arch, *version, path)
    return cubin


def device_arch(device: int = 0) -> str:
    """``sm_XY`` of CUDA `device`."""
    cudart = load_cudart()
    attr = cudart.cudaDeviceAttr
    major = check(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device), "attribute")
    minor = check(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device), "attribute")
    return f"sm_{major}{minor}"


class LaunchArgs:
    """cuLaunchKernel's ``kernelParams``: a ctypes struct holding every argument and the array of their
    addresses, built once per kernel; `fill` rewrites the values in place (the driver copies them at the
    launch). A parameter may itself be a ctypes struct (passed by value)."""

    def __init__(self, types: Sequence[Any]) -> None:
        self._names = [f"a{i}" for i in range(len(types))]
        layout = type(
            "KernelArgs", (ctypes.Structure,), {"_fields_": list(zip(self._names, types, strict=True))}
        )
        self._values = layout()
        base = ctypes.addressof(self._values)
        offsets = [getattr(layout, name).offset for name in self._names]
        self._pointers = (ctypes.c_void_p * len(types))(*(base + offset for offset in offsets))
        self.address = ctypes.addressof(self._pointers)

    def fill(self, values: Sequence[Any]) -> None:
        for name, value in zip(self._names, values, strict=True):
            setattr(self._values, name, value)

    def set(self, index: int, value: Any) -> None:
        setattr(self._values, self._names[index], value)

    def field(self, index: int) -> Any:
        """The ctypes object of argument `index` (for a struct argument: fill its members in place)."""
        return getattr(self._values, self._names[index])


class Kernel:
    """One function of a compiled cubin, loaded in the current CUDA context."""

    def __init__(self, cubin: bytes, name: str, arg_types: Sequence[Any]) -> None:
        self._driver = d = cuda_module("driver")
        self._cubin = np.frombuffer(cubin, dtype=np.uint8).copy()
        self._module: Any = driver_check(d, d.cuModuleLoadData(self._cubin.ctypes.data), "cuModuleLoadData")
        self._function = driver_check(
            d, d.cuModuleGetFunction(self._module, name.encode()), "cuModuleGetFunction"
        )
        self.args = LaunchArgs(arg_types)

    def launch(self, grid: tuple[int, int, int], block: tuple[int, int, int], stream: Any) -> None:
        """Enqueue the function with the values last put in `args` on `stream` (a ``cudaStream_t``)."""
        d = self._driver
        driver_check(
            d,
            d.cuLaunchKernel(self._function, *grid, *block, 0, d.CUstream(int(stream)), self.args.address, 0),
            "cuLaunchKernel",
        )

    def close(self) -> None:
        if self._module is not None:
            driver_check(self._driver, self._driver.cuModuleUnload(self._module), "cuModuleUnload")
            self._module = None
