"""The torch device engine's variants on the GPU host: build time, images/s per batch size, host cost.

    python benchmarks/torch_variants.py --variants eager compiled --max-batch 64 --out $OUT

For each variant of `TorchDeviceEngine` (the daemon's engine class, nothing re-implemented):

- ``eager``: the converted module under autocast, one CUDA graph per batch size;
- ``compiled``: ``torch.compile`` specialised per batch size, then CUDA graphs.

(A third variant, one compile with a dynamic batch, was measured and dropped: inductor guards its int32
indexing and refused a batch range up to 64 at 640, "34611200*s0 <= 2147483647".)

it prints the time to build the engine (conversion, compiles, warm-up) cold and, in a second process
with the same inductor cache, warm; images/s at every batch size (CUDA-graph replays on one stream,
timed with CUDA events around 30 replays, inputs already on the GPU); the host time of one ``enqueue``
with the GPU idle and with it busy; and each image of a padded batch against the same image alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "eager": {"compile": "off"},
    "static": {"compile": "on"},
    "dynamic": {"compile": "on", "dynamic": True},
}


def build(model: Path, variant: str, max_batch: int, precision: str, sizes: list[int] | None):
    from streamer.engine.base import EngineOptions
    from streamer.engine.torch_device import TorchDeviceEngine

    options = EngineOptions(device="cuda", max_batch=max_batch, precision=precision)
    return TorchDeviceEngine(model, options, sizes=sizes, **VARIANTS[variant])  # type: ignore[arg-type]


def measure(engine, reps: int = 30) -> dict:
    import torch

    from streamer.engine.cuda_executor import DeviceArray

    spec = engine.spec
    x = DeviceArray((spec.max_batch, 3, spec.height, spec.width), np.float32)
    y = DeviceArray((spec.max_batch, spec.boxes, spec.outputs_per_box), np.float32)
    torch.as_tensor(_view(x.ptr, (spec.max_batch, 3, spec.height, spec.width)), device="cuda").uniform_()
    torch.cuda.synchronize()
    ctx = engine.new_context()
    engine.bind(ctx, x.ptr, {"output": y.ptr})
    stream = torch.cuda.Stream()
    sid = stream.cuda_stream
    rows = {}
    for size in engine.sizes:
        for _ in range(3):
            engine.enqueue(ctx, size, x.ptr, {"output": y.ptr}, sid)
        stream.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        host = []
        start.record(stream)
        for _ in range(reps):
            t = time.perf_counter()
            engine.enqueue(ctx, size, x.ptr, {"output": y.ptr}, sid)
            host.append(time.perf_counter() - t)
        end.record(stream)
        end.synchronize()
        ms = start.elapsed_time(end) / reps
        stream.synchronize()
        t = time.perf_counter()
        engine.enqueue(ctx, size, x.ptr, {"output": y.ptr}, sid)
        idle = time.perf_counter() - t
        stream.synchronize()
        rows[size] = {
            "ms": ms, "img_s": size / ms * 1e3, "host_idle_us": idle * 1e6,
            "host_busy_us_median": float(np.median(host)) * 1e6,
            "host_busy_us_max": float(np.max(host)) * 1e6,
        }  # fmt: skip
    rows["padding"] = padded_equals_alone(engine, ctx, x, y, sid)
    x.close()
    y.close()
    return rows


def padded_equals_alone(engine, ctx, x, y, sid) -> float:
    """Max |Δ| between each image of a batch of 3 (run at the next size up) and the image alone."""
    import torch

    spec = engine.spec
    shape_in = (spec.max_batch, 3, spec.height, spec.width)
    shape_out = (spec.max_batch, spec.boxes, spec.outputs_per_box)
    xin = torch.as_tensor(_view(x.ptr, shape_in), device="cuda")
    yout = torch.as_tensor(_view(y.ptr, shape_out), device="cuda")
    n = min(3, spec.max_batch)
    images = torch.rand((n, 3, spec.height, spec.width), device="cuda")
    torch.cuda.synchronize()
    xin[:n] = images
    torch.cuda.synchronize()
    engine.enqueue(ctx, n, x.ptr, {"output": y.ptr}, sid)
    torch.cuda.synchronize()
    together = yout[:n].clone()
    worst = 0.0
    for i in range(n):
        xin[0] = images[i]
        torch.cuda.synchronize()
        engine.enqueue(ctx, 1, x.ptr, {"output": y.ptr}, sid)
        torch.cuda.synchronize()
        worst = max(worst, float((yout[0] - together[i]).abs().max()))
    return worst


def _view(ptr: int, shape: tuple[int, ...]):
    from streamer.engine.torch_device import _CudaView

    return _CudaView(ptr, shape)


def child(args: argparse.Namespace) -> None:
    """Build once (warm cache) and print the seconds as JSON."""
    started = time.perf_counter()
    engine = build(args.model, args.child, args.max_batch, args.precision, args.sizes)
    print(json.dumps({"build_s": time.perf_counter() - started, "variant": engine.variant}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--precision", default="fp16", choices=("fp16", "fp32"))
    parser.add_argument("--model", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import torch
    from gpu_executor import random_yolov7

    os.environ.setdefault("YOLOSTREAM_CACHE", "/tmp/yolostream-cache")
    model = args.model or random_yolov7(Path("/tmp/yolov7-random.onnx"))
    results = {}
    for variant in args.variants:
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        engine = build(model, variant, args.max_batch, args.precision, args.sizes)
        cold = time.perf_counter() - started
        rows = measure(engine)
        peak = torch.cuda.max_memory_allocated() / 2**20
        engine.close()
        del engine
        warm = None
        if variant != "eager":
            cmd = [sys.executable, __file__, "--child", variant, "--max-batch", str(args.max_batch),
                   "--precision", args.precision, "--model", str(model)]  # fmt: skip
            if args.sizes:
                cmd += ["--sizes", *map(str, args.sizes)]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            warm = json.loads(lines[-1])["build_s"] if lines else None
            if not lines:
                print(out.stderr[-2000:], file=sys.stderr)
        results[variant] = {"cold_s": cold, "warm_s": warm, "peak_mib": peak, "rows": rows}
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "torch_variants.json").write_text(json.dumps(results, indent=1, default=str))
        print(f"{variant}: built in {cold:.1f} s (warm {warm}), peak {peak:.0f} MiB, padded-vs-alone "
              f"{rows['padding']:.3g}", flush=True)  # fmt: skip
    print(f"\nGPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}, YOLOv7-640 random weights, "
          f"{args.precision}; images/s (host µs per enqueue: idle / busy median / busy max)")  # fmt: skip
    sizes = [s for s in next(iter(results.values()))["rows"] if s != "padding"]
    print("batch | " + " | ".join(f"{v:>26}" for v in results))
    for size in sizes:
        cells = []
        for v in results:
            r = results[v]["rows"].get(size)
            cells.append("-" if r is None else f"{r['img_s']:7.0f} ({r['host_idle_us']:.0f}/"
                         f"{r['host_busy_us_median']:.0f}/{r['host_busy_us_max']:.0f})")  # fmt: skip
        print(f"{size:5} | " + " | ".join(f"{c:>26}" for c in cells))
    print("build s cold/warm | " + " | ".join(
        f"{results[v]['cold_s']:.0f} / {'-' if results[v]['warm_s'] is None else round(results[v]['warm_s'])}"
        for v in results))  # fmt: skip


if __name__ == "__main__":
    main()
