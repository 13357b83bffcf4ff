"""The first step of NMS on the GPU: only the grid rows that can become detections come back to the host.

A YOLOv7 grid output is ``[B, 25200, 85]`` float32 at 640: 8.6 MB per image. Copying all of it to the
host and scanning it there (at 2,000 images/s, 17 GB/s of host memory traffic) is what NMS's first step
— keep the rows whose objectness is above ``conf_thres`` (`streamer.postprocess.nms`, step 1) — throws
almost all of away: on real video a few hundred rows pass. The kernel here does that step where the grid
is, on the executor slot's stream right behind the engine: every row with ``objectness > conf`` (float32,
as NumPy and torch compare) is copied into a per-image buffer of `capacity` rows, with its row index and
a per-image count. Only those buffers are copied back. Rows land in the order threads reach the atomic
counter, so `GridCandidates.rows` puts them back in row order by their index: the CPU's NMS then sees
exactly the rows, in exactly the order, it would have found itself, and gives identical detections.

An image with more than `capacity` candidates (a very low confidence threshold, a model that is not
trained) gets its whole grid copied back instead, synchronously: correct, only slower.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from streamer.cuda import nvrtc
from streamer.cuda.runtime import DeviceArray, PinnedArray, check, load_cudart

KERNEL_NAME = "grid_candidates"
BLOCK = 256
CAPACITY = 2048
"""Candidate rows kept per image on the GPU (696 KB at 85 values per row)."""

SOURCE = r"""
extern "C" __global__ void grid_candidates(
    const float* __restrict__ grid, int boxes, int width, float conf, int capacity,
    int* __restrict__ counts, int* __restrict__ index, float* __restrict__ rows)
{
    int b = blockIdx.y;
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= boxes) return;
    const float* r = grid + ((long long)b * boxes + row) * width;
    if (!(r[4] > conf)) return;  // NaN does not pass, as in NumPy
    int k = atomicAdd(counts + b, 1);
    if (k >= capacity) return;
    long long at = (long long)b * capacity + k;
    index[at] = row;
    float* dst = rows + at * width;
    for (int c = 0; c < width; ++c) dst[c] = r[c];
}
"""

_ARG_TYPES = (
    ctypes.c_uint64, ctypes.c_int32, ctypes.c_int32, ctypes.c_float, ctypes.c_int32,
    ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64,
)  # fmt: skip


def compile_cubin(arch: str) -> bytes:
    return nvrtc.compile_cubin(SOURCE, KERNEL_NAME, ("--std=c++17",), arch)


class GridCandidates:
    """One executor slot's candidate buffers (device and pinned host) and the kernel that fills them."""

    def __init__(
        self, boxes: int, width: int, max_batch: int, conf: float, capacity: int = CAPACITY, device: int = 0
    ) -> None:
        self.boxes, self.width, self.capacity = boxes, width, min(capacity, boxes)
        self.conf = float(np.float32(conf))
        self._cudart = load_cudart()
        shapes = {
            "counts": ((max_batch,), np.int32),
            "index": ((max_batch, self.capacity), np.int32),
            "rows": ((max_batch, self.capacity, width), np.float32),
        }
        self._device = {name: DeviceArray(shape, dtype) for name, (shape, dtype) in shapes.items()}
        self._per_image = {name: self._device[name].nbytes // max_batch for name in shapes}
        self._host = {name: PinnedArray(shape, dtype) for name, (shape, dtype) in shapes.items()}
        self._kernel = nvrtc.Kernel(compile_cubin(nvrtc.device_arch(device)), KERNEL_NAME, _ARG_TYPES)
        self._grid_ptr = 0
        self._n = 0

    def enqueue(self, grid_ptr: int, n: int, stream: Any) -> None:
        """Behind the engine on `stream`: filter the `n` images of the grid at `grid_ptr`, copy back."""
        cudart, dev, host = self._cudart, self._device, self._host
        self._grid_ptr, self._n = grid_ptr, n
        check(cudart.cudaMemsetAsync(dev["counts"].ptr, 0, 4 * n, stream), "cudaMemsetAsync")
        self._kernel.args.fill(
            (grid_ptr, self.boxes, self.width, self.conf, self.capacity,
             dev["counts"].ptr, dev["index"].ptr, dev["rows"].ptr)
        )  # fmt: skip
        self._kernel.launch(((self.boxes + BLOCK - 1) // BLOCK, n, 1), (BLOCK, 1, 1), stream)
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in ("counts", "index", "rows"):
            nbytes = self._per_image[name] * n
            check(
                cudart.cudaMemcpyAsync(host[name].ptr, dev[name].ptr, nbytes, to_host, stream), "copy to host"
            )

    def count(self, i: int) -> int:
        """Candidates of image `i` (may exceed `capacity`); valid once the slot's batch has finished."""
        return int(self._host["counts"].array[i])

    def rows(self, i: int) -> np.ndarray:
        """Image `i`'s rows with objectness above the threshold, in row order (``[K, width]`` float32).

        Valid once the slot's batch has finished and until the slot is submitted again.
        """
        k = self.count(i)
        if k > self.capacity:  # too many to keep: the whole grid of this image
            grid = np.empty((self.boxes, self.width), np.float32)
            offset = i * self.boxes * self.width * 4
            kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            check(
                self._cudart.cudaMemcpy(grid.ctypes.data, self._grid_ptr + offset, grid.nbytes, kind),
                "copy grid",
            )
            return grid
        order = np.argsort(self._host["index"].array[i, :k], kind="stable")
        return self._host["rows"].array[i, :k][order]

    def close(self) -> None:
        arrays: list[DeviceArray | PinnedArray] = [*self._device.values(), *self._host.values()]
        for array in arrays:
            array.close()
        self._kernel.close()
