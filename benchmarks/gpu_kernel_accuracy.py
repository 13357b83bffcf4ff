"""|Δ| of the CUDA letterbox kernel (or its NumPy model) against the CPU reference, per size and codec.

    python benchmarks/gpu_kernel_accuracy.py                  # the kernel (GPU host)
    python benchmarks/gpu_kernel_accuracy.py --backend model  # the NumPy model (anywhere)

For 1920×1080, 1280×720, 1366×768, 720×1280 and 3840×2160, H.264 and HEVC clips (tinycoco photographs
when ../shared exists, else synthetic content) are encoded and decoded with PyAV; each frame's NV12
planes go through the kernel (or the model), and the CPU path's tensor (`letterbox` + `to_input_tensor` on
PyAV's rgb24) is the reference. Printed per clip: max |Δ| and the share of values within 1/255 (the
issue's criterion: ≥ 99.9 % and max ≤ 2/255), the histogram of |Δ| in 1/255 steps, and for the kernel
how many values differ from the model at all (0: bit for bit). Needs PyAV (carry its wheel to the GPU
host: docs/gpu.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.preprocess.letterbox import letterbox_geometry
from streamer.preprocess.nv12 import letterbox_nv12
from tests.support.nv12clips import (
    CODECS,
    DELTA_BINS,
    SIZES,
    Nv12Frame,
    content_frames,
    decode_nv12,
    delta_histogram,
    reference_input,
    write_tagged_clip,
)


class _Kernel:
    """The kernel on the GPU: upload NV12 with a pitch, launch, download."""

    def __init__(self, dst: int) -> None:
        from streamer.cuda.runtime import check, load_cudart
        from streamer.preprocess.cuda_kernel import LetterboxKernel

        self.check, self.cudart = check, load_cudart()
        self.kernel = LetterboxKernel(dst, dst, swap_rb=False)
        self.stream = check(self.cudart.cudaStreamCreate(), "stream")
        self.dst = dst

    def __call__(self, f: Nv12Frame) -> np.ndarray:
        check, cudart = self.check, self.cudart
        pitch = (f.width + 1 + 255) // 256 * 256
        flat_uv = np.ascontiguousarray(f.uv.reshape(f.uv.shape[0], -1))
        base = int(check(cudart.cudaMalloc(pitch * (f.height + flat_uv.shape[0])), "cudaMalloc"))
        out = int(check(cudart.cudaMalloc(self.kernel.item_bytes), "cudaMalloc"))
        try:
            up = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            uv_ptr = base + pitch * f.height
            for ptr, plane in ((base, np.ascontiguousarray(f.y)), (uv_ptr, flat_uv)):
                rows, width = plane.shape
                check(cudart.cudaMemcpy2D(ptr, pitch, plane.ctypes.data, width, width, rows, up), "upload")
            g = letterbox_geometry(f.width, f.height, self.dst, self.dst)
            self.kernel.launch(base, uv_ptr, pitch, g, f.coefficients, out, 0, self.stream)
            check(cudart.cudaStreamSynchronize(self.stream), "sync")
            result = np.empty((3, self.dst, self.dst), np.float32)
            down = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            check(cudart.cudaMemcpy(result.ctypes.data, out, result.nbytes, down), "download")
            return result
        finally:
            cudart.cudaFree(base)
            cudart.cudaFree(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("kernel", "model"), default="kernel")
    parser.add_argument("--frames", type=int, default=2, help="frames per clip (4K: 1)")
    parser.add_argument("--size", type=int, default=640, help="model input (square)")
    args = parser.parse_args()
    kernel: Any = _Kernel(args.size) if args.backend == "kernel" else None
    bins = [f"[{lo:g},{hi:g})" for lo, hi in zip(DELTA_BINS, [*DELTA_BINS[1:], np.inf], strict=True)]
    print(f"backend: {args.backend}; |Δ| in 1/255 steps, per value of the 3×{args.size}×{args.size} input")
    head = f"{'clip':<16} {'content':<9} {'max':>6} {'≤1 (%)':>9} " + " ".join(f"{b:>10}" for b in bins)
    print(head + ("  ≠model" if kernel else ""))
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            count = 1 if size[0] * size[1] > 1920 * 1088 else args.frames
            frames, content = content_frames(size, count=count)
            for codec in CODECS:
                try:
                    clip = write_tagged_clip(Path(tmp) / f"{codec}.mkv", frames, codec)
                except Exception:  # one clip that cannot be written must not hide the others' rows
                    traceback.print_exc()
                    print(f"{size[0]}x{size[1]} {codec:<5} not encoded (traceback above)", flush=True)
                    continue
                for f in decode_nv12(clip):
                    model, _ = letterbox_nv12(
                        f.y, f.uv, f.width, f.height, args.size, args.size, f.coefficients
                    )
                    got = kernel(f) if kernel else model
                    stats = delta_histogram(got, reference_input(f.rgb, args.size, args.size))
                    row = f"{size[0]}x{size[1]} {codec:<5}"
                    line = f"{row:<16} {content:<9} {stats['max']:>6.3f} {100 * stats['within_1']:>9.4f} "
                    line += " ".join(f"{stats[b]:>10}" for b in bins)
                    if kernel:
                        line += f"  {int(np.count_nonzero(got != model)):>6}"
                    print(line, flush=True)


if __name__ == "__main__":
    main()
