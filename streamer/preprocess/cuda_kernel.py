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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from streamer.cuda import nvrtc
from streamer.cuda.runtime import check, load_cudart
from streamer.errors import EngineError
from streamer.preprocess.letterbox import PAD_VALUE, LetterboxGeometry
from streamer.preprocess.nv12 import YuvCoefficients, resize_taps

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

// One picture of the batch. taps: x_i0[new_w] x_i1[new_w] y_i0[new_h] y_i1[new_h] (int32), then x_w0 x_w1
// y_w0 y_w1 (float32). Layout mirrored by `Item` in cuda_kernel.py.
struct Item {
    const unsigned char* y_plane; const unsigned char* uv_plane; const int* taps; long long pitch;
    int new_w, new_h, left, top;
    int cy, y_offset, v2r, u2b, u2g, v2g;
    int index, unused;
};
struct Items { Item item[MAX_ITEMS]; };

// blockIdx.z picks the picture: one launch letterboxes a whole batch (up to MAX_ITEMS pictures).
extern "C" __global__ void letterbox_nv12(
    const Items items, int dst_w, int dst_h, int swap_rb, float pad, void* __restrict__ out, int half)
{
    const Item& it = items.item[blockIdx.z];
    const unsigned char* __restrict__ y_plane = it.y_plane;
    const unsigned char* __restrict__ uv_plane = it.uv_plane;
    const int* __restrict__ taps = it.taps;
    const long long pitch = it.pitch;
    const int new_w = it.new_w, new_h = it.new_h, left = it.left, top = it.top;
    const int cy = it.cy, y_offset = it.y_offset, v2r = it.v2r, u2b = it.u2b, u2g = it.u2g, v2g = it.v2g;
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
    out = (char*)out + (long long)it.index * 3 * plane * (half ? 2 : 4);
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


MAX_ITEMS = 32
"""Pictures per launch: their descriptors travel as a kernel parameter by value (80 bytes each), which
stays under the 4 KB that every CUDA driver accepts; a larger batch takes several launches."""


class Item(ctypes.Structure):
    """One picture's descriptor, laid out as the kernel's ``struct Item``."""

    _fields_ = [
        ("y_plane", ctypes.c_uint64), ("uv_plane", ctypes.c_uint64), ("taps", ctypes.c_uint64),
        ("pitch", ctypes.c_int64),
        *((name, ctypes.c_int32) for name in ("new_w", "new_h", "left", "top")),
        *((name, ctypes.c_int32) for name in ("cy", "y_offset", "v2r", "u2b", "u2g", "v2g")),
        ("index", ctypes.c_int32), ("unused", ctypes.c_int32),
    ]  # fmt: skip


class Items(ctypes.Structure):
    _fields_ = [("item", Item * MAX_ITEMS)]


_ARG_TYPES = (
    Items,
    ctypes.c_int32,
    ctypes.c_int32,
    ctypes.c_int32,
    ctypes.c_float,
    ctypes.c_uint64,
    ctypes.c_int32,
)
"""The kernel's parameters: the items; dst_w, dst_h, swap_rb, pad, out, fp16."""


@dataclass(frozen=True)
class Picture:
    """One NV12 picture in device memory to letterbox into item `index` of the batch."""

    y_ptr: int
    uv_ptr: int
    pitch: int
    geometry: LetterboxGeometry
    coefficients: YuvCoefficients
    index: int


def compile_cubin(arch: str, cache: Path | None = None) -> bytes:
    """The kernel compiled for `arch` (e.g. ``"sm_90"``), from the cache or by NVRTC (then cached).

    NVRTC needs no GPU, so this also runs on a CPU machine where cuda-python and the NVRTC library
    (``nvidia-cuda-nvrtc``) are installed.
    """
    return nvrtc.compile_cubin(SOURCE, KERNEL_NAME, (*OPTIONS, f"-DMAX_ITEMS={MAX_ITEMS}"), arch, cache)


@dataclass
class _Taps:
    geometry: LetterboxGeometry
    ptr: int


class LetterboxKernel:
    """The compiled kernel, loaded in the current CUDA context, plus its per-geometry tap tables.

    `launch_batch` enqueues the pictures of a batch on a stream in one launch (per `MAX_ITEMS`) and
    returns at once. Tap tables are uploaded once per source size and kept until `close`.
    """

    def __init__(
        self, dst_w: int, dst_h: int, *, swap_rb: bool, dtype: str = "float32", device: int = 0
    ) -> None:
        if dtype not in ("float32", "float16"):
            raise EngineError(f"the CUDA letterbox writes float32 or float16, not {dtype}")
        self.dst_w, self.dst_h, self.swap_rb, self.dtype = dst_w, dst_h, swap_rb, dtype
        self.item_bytes = 3 * dst_w * dst_h * (2 if dtype == "float16" else 4)
        self._cudart = load_cudart()
        check(self._cudart.cudaSetDevice(device), "cudaSetDevice")
        check(self._cudart.cudaFree(0), "context initialisation")  # make the primary context current
        self._kernel = nvrtc.Kernel(compile_cubin(nvrtc.device_arch(device)), KERNEL_NAME, _ARG_TYPES)
        self._taps: dict[tuple[int, int], _Taps] = {}
        pad = float(np.float32(PAD_VALUE) / np.float32(255))
        self._kernel.args.fill((Items(), dst_w, dst_h, int(swap_rb), pad, 0, int(dtype == "float16")))
        self._items: Items = self._kernel.args.field(0)  # filled in place for every launch
        self._grid = ((dst_w + BLOCK[0] - 1) // BLOCK[0], (dst_h + BLOCK[1] - 1) // BLOCK[1])

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

    def launch_batch(self, pictures: Sequence[Picture], out_ptr: int, stream: Any) -> None:
        """Enqueue the letterbox of every picture into its item of the batch at `out_ptr` on `stream`."""
        for first in range(0, len(pictures), MAX_ITEMS):
            chunk = pictures[first : first + MAX_ITEMS]
            for slot, picture in zip(self._items.item, chunk, strict=False):
                self._describe(slot, picture)
            self._kernel.args.set(5, out_ptr)
            self._kernel.launch((*self._grid, len(chunk)), (*BLOCK, 1), stream)

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
        self.launch_batch(
            [Picture(y_ptr, uv_ptr, pitch, geometry, coefficients, batch_index)], out_ptr, stream
        )

    def _describe(self, item: Item, picture: Picture) -> None:
        g = picture.geometry
        if (g.dst_w, g.dst_h) != (self.dst_w, self.dst_h):
            raise ValueError(f"geometry for {g.dst_w}x{g.dst_h}, kernel for {self.dst_w}x{self.dst_h}")
        item.y_plane, item.uv_plane, item.taps, item.pitch = (
            picture.y_ptr,
            picture.uv_ptr,
            self.taps(g),
            picture.pitch,
        )
        item.new_w, item.new_h, item.left, item.top = g.new_w, g.new_h, g.left, g.top
        (item.cy, item.y_offset, item.v2r, item.u2b, item.u2g, item.v2g) = picture.coefficients.as_tuple()
        item.index = picture.index

    def close(self) -> None:
        for taps in self._taps.values():
            check(self._cudart.cudaFree(taps.ptr), "cudaFree")
        self._taps.clear()
        self._kernel.close()


def tap_table(geometry: LetterboxGeometry) -> np.ndarray:
    """The kernel's tap tables for `geometry` as one buffer: int32 indices, then float32 weights."""
    xi0, xi1, xw0, xw1 = resize_taps(geometry.src_w, geometry.new_w)
    yi0, yi1, yw0, yw1 = resize_taps(geometry.src_h, geometry.new_h)
    ints = np.concatenate([xi0, xi1, yi0, yi1]).astype(np.int32)
    floats = np.concatenate([xw0, xw1, yw0, yw1]).astype(np.float32)
    return np.concatenate([ints.view(np.uint8), floats.view(np.uint8)])
