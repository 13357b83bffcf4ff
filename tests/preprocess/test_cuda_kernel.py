"""The CUDA letterbox kernel against its NumPy model (bit for bit) and the CPU reference (the criterion).

On the GPU host: ``python -m pytest tests/preprocess/test_cuda_kernel.py`` (docs/gpu.md has the full
command line with the carried wheels). Without a GPU the kernel tests skip; the compile test runs
wherever cuda-python and the NVRTC library are installed (NVRTC needs no GPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.preprocess.letterbox import letterbox_geometry
from streamer.preprocess.nv12 import letterbox_nv12
from tests.support.cuda import nvrtc_or_skip
from tests.support.nv12clips import (
    CODECS,
    SIZES,
    content_frames,
    decode_nv12,
    delta_histogram,
    reference_input,
)
from tests.support.nv12clips import write_tagged_clip as write_clip


@pytest.fixture(scope="module")
def gpu() -> Any:
    nvrtc_or_skip()
    from streamer.cuda.runtime import load_cudart

    cudart = load_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        pytest.skip("no CUDA GPU")
    return cudart


def test_launch_arguments_sit_at_the_addresses_handed_to_the_driver() -> None:
    """The kernel's parameters, each read back through its entry of the kernelParams array; the picture
    descriptors (passed by value) laid out as the kernel's ``struct Item``: 3 pointers, a 64-bit pitch, 12
    ints, 80 bytes."""
    import ctypes

    from streamer.cuda.nvrtc import LaunchArgs
    from streamer.preprocess.cuda_kernel import _ARG_TYPES, MAX_ITEMS, Item, Items

    assert ctypes.sizeof(Item) == 80 and ctypes.sizeof(Items) == 80 * MAX_ITEMS <= 4096 - 64
    assert [Item.y_plane.offset, Item.pitch.offset, Item.new_w.offset, Item.cy.offset, Item.index.offset] == [
        0, 24, 32, 48, 72,
    ]  # fmt: skip
    items = Items()
    items.item[3].y_plane, items.item[3].pitch, items.item[3].index = 2**40 + 1, 4096, 3
    values = (items, 640, 640, 1, 114 / 255, 2**50, 0)
    args = LaunchArgs(_ARG_TYPES)
    args.fill((Items(), 1, 1, 0, 0.5, 1, 1))  # stale values are overwritten
    args.fill(values)
    pointers = (ctypes.c_void_p * len(values)).from_address(args.address)
    for pointer, kind, value in zip(pointers[1:], _ARG_TYPES[1:], values[1:], strict=True):
        got = ctypes.cast(pointer, ctypes.POINTER(kind)).contents.value
        assert got == (pytest.approx(value, rel=1e-7) if kind is ctypes.c_float else value)
    passed = ctypes.cast(pointers[0], ctypes.POINTER(Items)).contents.item[3]
    assert (passed.y_plane, passed.pitch, passed.index) == (2**40 + 1, 4096, 3)
    args.field(0).item[5].index = 5  # filled in place, as LetterboxKernel does
    assert ctypes.cast(pointers[0], ctypes.POINTER(Items)).contents.item[5].index == 5


def test_kernel_compiles_and_is_cached(tmp_path: Path) -> None:
    nvrtc_or_skip()
    from streamer.preprocess.cuda_kernel import compile_cubin

    cubin = compile_cubin("sm_90", cache=tmp_path)
    assert cubin[:4] == b"\x7fELF"
    (cached,) = tmp_path.glob("letterbox_nv12-*-sm_90.cubin")
    assert compile_cubin("sm_90", cache=tmp_path) == cubin == cached.read_bytes()


class _Device:
    """Device buffers for one test: NV12 with a pitch, an output batch, a stream."""

    def __init__(self, cudart: Any) -> None:
        self.cudart = cudart
        self.ptrs: list[int] = []
        self.stream = self._ok(cudart.cudaStreamCreate())

    def _ok(self, result: Any) -> Any:
        from streamer.cuda.runtime import check

        return check(result, "test call")

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._ok(self.cudart.cudaMalloc(nbytes)))
        self.ptrs.append(ptr)
        return ptr

    def upload_nv12(self, y: np.ndarray, uv: np.ndarray, pitch: int) -> tuple[int, int]:
        """Y then UV, each row `pitch` bytes apart, the padding filled with garbage; (y_ptr, uv_ptr)."""
        flat_uv = np.ascontiguousarray(uv.reshape(uv.shape[0], -1))
        base = self.alloc(pitch * (y.shape[0] + flat_uv.shape[0]))
        self._ok(self.cudart.cudaMemset(base, 0xAB, pitch * (y.shape[0] + flat_uv.shape[0])))
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        uv_ptr = base + pitch * y.shape[0]
        for ptr, plane in ((base, np.ascontiguousarray(y)), (uv_ptr, flat_uv)):
            rows, width = plane.shape
            self._ok(self.cudart.cudaMemcpy2D(ptr, pitch, plane.ctypes.data, width, width, rows, kind))
        return base, uv_ptr

    def download(self, ptr: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        out = np.empty(shape, dtype)
        self._ok(self.cudart.cudaStreamSynchronize(self.stream))
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.cudart.cudaMemcpy(out.ctypes.data, ptr, out.nbytes, kind))
        return out

    def close(self) -> None:
        for ptr in self.ptrs:
            self.cudart.cudaFree(ptr)
        self.cudart.cudaStreamDestroy(self.stream)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("kernel")
    out = {}
    for size in SIZES:
        frames, _ = content_frames(size, count=1)
        for codec in CODECS:
            out[(size, codec)] = write_clip(folder / f"{codec}_{size[0]}x{size[1]}.mkv", frames, codec)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_kernel_equals_model_and_meets_the_criterion(
    gpu: Any, clips: dict, size: tuple[int, int], codec: str
) -> None:
    from streamer.preprocess.cuda_kernel import LetterboxKernel

    (f,) = decode_nv12(clips[(size, codec)], limit=1)
    pitch = (f.width + 1 + 511) // 512 * 512
    dev = _Device(gpu)
    kernels = {
        (dtype, swap): LetterboxKernel(640, 640, swap_rb=swap, dtype=dtype)
        for dtype in ("float32", "float16")
        for swap in (False, True)
    }
    try:
        y_ptr, uv_ptr = dev.upload_nv12(f.y, f.uv, pitch)
        g = letterbox_geometry(f.width, f.height, 640, 640)
        for (dtype, swap), kernel in kernels.items():
            out = dev.alloc(2 * kernel.item_bytes)
            kernel.launch(y_ptr, uv_ptr, pitch, g, f.coefficients, out, 1, dev.stream)  # batch index 1
            got = dev.download(out + kernel.item_bytes, (3, 640, 640), np.dtype(dtype))
            model, _ = letterbox_nv12(f.y, f.uv, f.width, f.height, 640, 640, f.coefficients, swap_rb=swap,
                                      dtype=np.dtype(dtype))  # fmt: skip
            assert np.array_equal(got.view(np.uint8), model.view(np.uint8)), (
                f"{dtype} swap_rb={swap}: {np.count_nonzero(got != model)} values differ from the model"
            )
            if dtype == "float32" and not swap:
                stats = delta_histogram(got, reference_input(f.rgb))
                print(f"{size[0]}x{size[1]} {codec}: {stats}")
                assert stats["within_1"] >= 0.999 and stats["max"] <= 2, stats
    finally:
        for kernel in kernels.values():
            kernel.close()
        dev.close()


@pytest.mark.gpu
def test_one_launch_letterboxes_a_batch_of_pictures_of_different_sizes(gpu: Any, clips: dict) -> None:
    """`launch_batch`: every picture at its own batch index, each equal to the model; a batch larger than
    the pictures one launch takes (MAX_ITEMS) goes in several launches."""
    from streamer.preprocess.cuda_kernel import MAX_ITEMS, LetterboxKernel, Picture

    frames = [decode_nv12(clips[(size, "h264")], limit=1)[0] for size in SIZES]
    dev = _Device(gpu)
    kernel = LetterboxKernel(640, 640, swap_rb=False, dtype="float16")
    try:
        uploads = []
        for f in frames:
            pitch = (f.width + 1 + 511) // 512 * 512
            uploads.append((*dev.upload_nv12(f.y, f.uv, pitch), pitch))
        count = MAX_ITEMS + 3
        order = [i % len(frames) for i in range(count)]  # picture k of the batch is frames[order[k]]
        pictures = [
            Picture(*uploads[j][:2], uploads[j][2],
                    letterbox_geometry(frames[j].width, frames[j].height, 640, 640),
                    frames[j].coefficients, k)
            for k, j in enumerate(order)
        ]  # fmt: skip
        out = dev.alloc(count * kernel.item_bytes)
        dev._ok(gpu.cudaMemset(out, 0xFF, count * kernel.item_bytes))  # NaN everywhere: all must be written
        kernel.launch_batch(pictures[::-1], out, dev.stream)  # any order: the index says where
        got = dev.download(out, (count, 3, 640, 640), np.dtype(np.float16))
        for k, j in enumerate(order):
            f = frames[j]
            model, _ = letterbox_nv12(f.y, f.uv, f.width, f.height, 640, 640, f.coefficients, swap_rb=False,
                                      dtype=np.dtype(np.float16))  # fmt: skip
            assert np.array_equal(got[k].view(np.uint16), model.view(np.uint16)), f"item {k} ({SIZES[j]})"
    finally:
        kernel.close()
        dev.close()
