"""The CUDA letterbox kernel: NV12 in device memory → one item of the engine's NCHW input batch.

It evaluates exactly the arithmetic of the NumPy model (`streamer.preprocess.nv12`, whose docstring says
why each step is what it is): one thread per output pixel computes the three channels — swscale's
integer YUV → RGB at the four neighbouring source pixels (nearest chroma), cv2's INTER_LINEAR taps
read from small per-geometry tables that the model computes (`resize_taps`), horizontal then vertical
interpolation in float32, ``/ 255``, channel order, pad 114 — and writes float32 or float16 at batch
index ``b``. It is compiled without FMA contraction (``--fmad=false``) and with IEEE division, so every
value equals the model's bit for bit.

Compiled once per process with NVRTC (``cuda.bindings.nvrtc``) for the GPU's architecture; the cubin is
cached under ``cache_dir()/kernels`` keyed by the source, the options, NVRTC's version and the
architecture, so later start-ups only load it (``cuModuleLoadData``). Launched with the driver API
(``cuLaunchKernel``) on the caller's stream. Imported only on the GPU path.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer.engine.cuda import check, load_cudart
from streamer.errors import EngineError
from streamer.paths import cache_dir
from streamer.preprocess.letterbox import PAD_VALUE, LetterboxGeometry
from streamer.preprocess.nv12 import YuvCoefficients, resize_taps

log = logging.getLogger(__name__)

KERNEL_NAME = "letterbox_nv12"
BLOCK = (32, 8)
OPTIONS = ("--fmad=false", "--prec-div=true", "--std=c++17")

SOURCE = r"""
static __device__ __forceinline__ int sws_clip(int v) { return v < 0 ? 0 : (v > 255 ? 255 : v); }

// swscale's yuv420p -> rgb24 (libswscale/x86/yuv_2_rgb.asm): pmulhw keeps the high 16 bits (floor).
static __device__ __forceinline__ void sws_rgb(
    int Y, int U, int V, int cy, int y_offset, int v2r, int u2b, int u2g, int v2g, float* rgb)
{
    int y8 = (Y << 3) - y_offset, u8 = (U << 3) - 1024, v8 = (V << 3) - 1024;
    int luma = (y8 * cy) >> 16;
    rgb[0] = (float)sws_clip(luma + ((v8 * v2r) >> 16));
    rgb[1] = (float)sws_clip(luma + ((u8 * u2g) >> 16) + ((v8 * v2g) >> 16));
    rgb[2] = (float)sws_clip(luma + ((u8 * u2b) >> 16));
}

static __device__ __forceinline__ void pixel(
    const unsigned char* __restrict__ y_plane, const unsigned char* __restrict__ uv_plane, long long pitch,
    int x, int y, int cy, int y_offset, int v2r, int u2b, int u2g, int v2g, float* rgb)
{
    int Y = y_plane[(long long)y * pitch + x];
    const unsigned char* uv = uv_plane + (long long)(y >> 1) * pitch + ((x >> 1) << 1);
    sws_rgb(Y, uv[0], uv[1], cy, y_offset, v2r, u2b, u2g, v2g, rgb);
}

// taps: x_i0[new_w] x_i1[new_w] y_i0[new_h] y_i1[new_h] (int32), then x_w0 x_w1 y_w0 y_w1 (float32).
extern "C" __global__ void letterbox_nv12(
    const unsigned char* __restrict__ y_plane, const unsigned char* __restrict__ uv_plane, long long pitch,
    const int* __restrict__ taps, int new_w, int new_h, int left, int top, int dst_w, int dst_h,
    int cy, int y_offset, int v2r, int u2b, int u2g, int v2g,
    int swap_rb, float pad, void* __restrict__ out, int half)
{
    int ox = blockIdx.x * blockDim.x + threadIdx.x;
    int oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= dst_w || oy >= dst_h) return;
    float v[3] = {pad, pad, pad};
    int dx = ox - left, dy = oy - top;
    if (dx >= 0 && dy >= 0 && dx < new_w && dy < new_h) {
        const int* x_i0 = taps;
        const int* x_i1 = x_i0 + new_w;
        const int* y_i0 = x_i1 + new_w;
        const int* y_i1 = y_i0 + new_h;
        const float* x_w0 = (const float*)(y_i1 + new_h);
        const float* x_w1 = x_w0 + new_w;
        const float* y_w0 = x_w1 + new_w;
        const float* y_w1 = y_w0 + new_h;
        int x0 = x_i0[dx], x1 = x_i1[dx], y0 = y_i0[dy], y1 = y_i1[dy];
        float ax0 = x_w0[dx], ax1 = x_w1[dx], ay0 = y_w0[dy], ay1 = y_w1[dy];
        float p00[3], p01[3], p10[3], p11[3];
        pixel(y_plane, uv_plane, pitch, x0, y0, cy, y_offset, v2r, u2b, u2g, v2g, p00);
        pixel(y_plane, uv_plane, pitch, x1, y0, cy, y_offset, v2r, u2b, u2g, v2g, p01);
        pixel(y_plane, uv_plane, pitch, x0, y1, cy, y_offset, v2r, u2b, u2g, v2g, p10);
        pixel(y_plane, uv_plane, pitch, x1, y1, cy, y_offset, v2r, u2b, u2g, v2g, p11);
        for (int c = 0; c < 3; ++c) {
            float h0 = __fadd_rn(__fmul_rn(p00[c], ax0), __fmul_rn(p01[c], ax1));
            float h1 = __fadd_rn(__fmul_rn(p10[c], ax0), __fmul_rn(p11[c], ax1));
            v[c] = __fdiv_rn(__fadd_rn(__fmul_rn(h0, ay0), __fmul_rn(h1, ay1)), 255.0f);
        }
    }
    long long plane = (long long)dst_w * dst_h, at = (long long)oy * dst_w + ox;
    for (int c = 0; c < 3; ++c) {
        float value = v[swap_rb ? 2 - c : c];
        if (half) {
            unsigned short bits;
            asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(value));  // round to nearest even
            ((unsigned short*)out)[c * plane + at] = bits;
        } else {
            ((float*)out)[c * plane + at] = value;
        }
    }
}
"""


def _module(name: str) -> Any:
    try:
        return importlib.import_module(f"cuda.bindings.{name}")
    except ImportError:
        try:
            return importlib.import_module(f"cuda.{name}")
        except ImportError as exc:
            raise EngineError(
                f"the CUDA letterbox needs cuda-python ({exc}): pip install 'yolostream[gpu]'"
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


def _driver_check(driver: Any, result: Any, what: str) -> Any:
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise EngineError(f"CUDA {what} failed: {err}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


def compile_cubin(arch: str, cache: Path | None = None) -> bytes:
    """The kernel compiled for `arch` (e.g. ``"sm_90"``), from the cache or by NVRTC (then cached).

    NVRTC needs no GPU, so this also runs on a CPU machine where cuda-python and the NVRTC library
    (``nvidia-cuda-nvrtc``) are installed.
    """
    nvrtc = _module("nvrtc")
    version = _nvrtc_check(nvrtc, nvrtc.nvrtcVersion(), "version")
    options = (*OPTIONS, f"--gpu-architecture={arch}")
    key = hashlib.sha256(repr((SOURCE, options, version)).encode()).hexdigest()[:24]
    folder = cache if cache is not None else cache_dir() / "kernels"
    path = folder / f"{KERNEL_NAME}-{key}-{arch}.cubin"
    if path.is_file():
        return path.read_bytes()
    program = _nvrtc_check(
        nvrtc, nvrtc.nvrtcCreateProgram(SOURCE.encode(), f"{KERNEL_NAME}.cu".encode(), 0, [], []), "create"
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
    log.info("compiled the letterbox kernel for %s with NVRTC %s.%s (%s)", arch, *version, path)
    return cubin


def device_arch(device: int = 0) -> str:
    """``sm_XY`` of CUDA `device`."""
    cudart = load_cudart()
    attr = cudart.cudaDeviceAttr
    major = check(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device), "attribute")
    minor = check(cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device), "attribute")
    return f"sm_{major}{minor}"


@dataclass
class _Taps:
    geometry: LetterboxGeometry
    ptr: int


class _Args:
    """cuLaunchKernel's ``kernelParams``: a ctypes struct holding every argument and the array of their
    addresses, built once per kernel; `fill` rewrites the values in place (the driver copies them at the
    launch). Twenty small NumPy arrays per launch cost 70 µs, more than the launch itself."""

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


_U64, _I64, _I32, _F32 = ctypes.c_uint64, ctypes.c_int64, ctypes.c_int32, ctypes.c_float
_ARG_TYPES = (_U64, _U64, _I64, _U64, *(_I32,) * 6, *(_I32,) * 6, _I32, _F32, _U64, _I32)
"""The kernel's parameters: y, uv, pitch, taps; new_w, new_h, left, top, dst_w, dst_h; the six colour
coefficients; swap_rb, pad, out, fp16."""


class LetterboxKernel:
    """The compiled kernel, loaded in the current CUDA context, plus its per-geometry tap tables.

    `launch` enqueues one frame on a stream and returns at once. Tap tables are uploaded once per source
    size and kept until `close`.
    """

    def __init__(
        self, dst_w: int, dst_h: int, *, swap_rb: bool, dtype: str = "float32", device: int = 0
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise EngineError(f"the CUDA letterbox writes float32 or float16, not {dtype}")
        self.dst_w, self.dst_h, self.swap_rb, self.dtype = dst_w, dst_h, swap_rb, dtype
        self.item_bytes = 3 * dst_w * dst_h * (2 if dtype == "float16" else 4)
        self._cudart = load_cudart()
        self._driver = _module("driver")
        check(self._cudart.cudaSetDevice(device), "cudaSetDevice")
        check(self._cudart.cudaFree(0), "context initialisation")  # make the primary context current
        cubin = compile_cubin(device_arch(device))
        self._cubin = np.frombuffer(cubin, dtype=np.uint8).copy()
        d = self._driver
        self._module = _driver_check(d, d.cuModuleLoadData(self._cubin.ctypes.data), "cuModuleLoadData")
        self._function = _driver_check(
            d, d.cuModuleGetFunction(self._module, KERNEL_NAME.encode()), "cuModuleGetFunction"
        )
        self._taps: dict[tuple[int, int], _Taps] = {}
        self._pad = np.float32(PAD_VALUE) / np.float32(255)
        self._args = _Args(_ARG_TYPES)

    def taps(self, geometry: LetterboxGeometry) -> int:
        """Device address of the tap tables of `geometry` (uploaded on first use)."""
        key = (geometry.src_w, geometry.src_h)
        known = self._taps.get(key)
        if known is not None:
            return known.ptr
        table = tap_table(geometry)
        ptr = int(check(self._cudart.cudaMalloc(table.nbytes), "cudaMalloc"))
        check(
            self._cudart.cudaMemcpy(
                ptr, table.ctypes.data, table.nbytes, self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            ),
            "copy taps",
        )
        self._taps[key] = _Taps(geometry, ptr)
        return ptr

    def launch(
        self,
        y_ptr: int,
        uv_ptr: int,
        pitch: int,
        geometry: LetterboxGeometry,
        coefficients: YuvCoefficients,
        out_ptr: int,
        batch_index: int,
        stream: Any,
    ) -> None:
        """Enqueue the letterbox of one NV12 picture into item `batch_index` of the batch at `out_ptr`.

        `y_ptr` / `uv_ptr` are device addresses of the planes, both `pitch` bytes per row; `geometry` is
        ``letterbox_geometry(width, height, dst_w, dst_h)``; `stream` a ``cudaStream_t`` (or its int).
        """
        if (geometry.dst_w, geometry.dst_h) != (self.dst_w, self.dst_h):
            raise ValueError(
                f"geometry for {geometry.dst_w}x{geometry.dst_h}, kernel for {self.dst_w}x{self.dst_h}"
            )
        g = geometry
        self._args.fill(
            (
                y_ptr, uv_ptr, pitch, self.taps(g), g.new_w, g.new_h, g.left, g.top, g.dst_w, g.dst_h,
                *coefficients.as_tuple(), int(self.swap_rb), float(self._pad),
                out_ptr + batch_index * self.item_bytes, int(self.dtype == "float16"),
            )
        )  # fmt: skip
        d = self._driver
        grid = ((g.dst_w + BLOCK[0] - 1) // BLOCK[0], (g.dst_h + BLOCK[1] - 1) // BLOCK[1], 1)
        _driver_check(
            d,
            d.cuLaunchKernel(
                self._function,
                *grid,
                BLOCK[0],
                BLOCK[1],
                1,
                0,
                d.CUstream(int(stream)),
                self._args.address,
                0,
            ),
            "cuLaunchKernel",
        )

    def close(self) -> None:
        for taps in self._taps.values():
            check(self._cudart.cudaFree(taps.ptr), "cudaFree")
        self._taps.clear()
        if self._module is not None:
            _driver_check(self._driver, self._driver.cuModuleUnload(self._module), "cuModuleUnload")
            self._module = None


def tap_table(geometry: LetterboxGeometry) -> np.ndarray:
    """The kernel's tap tables for `geometry` as one buffer: int32 indices, then float32 weights."""
    xi0, xi1, xw0, xw1 = resize_taps(geometry.src_w, geometry.new_w)
    yi0, yi1, yw0, yw1 = resize_taps(geometry.src_h, geometry.new_h)
    ints = np.concatenate([xi0, xi1, yi0, yi1]).astype(np.int32)
    floats = np.concatenate([xw0, xw1, yw0, yw1]).astype(np.float32)
    return np.concatenate([ints.view(np.uint8), floats.view(np.uint8)])
