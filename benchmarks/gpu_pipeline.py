"""End-to-end throughput of the daemon on the GPU host vs the engine alone (issue #4's target ≥ 0.90).

    python benchmarks/gpu_pipeline.py --streams 16 --batch 16 --seconds 20

- ceiling: the daemon's torch engine (`TorchDeviceEngine`, same graph, batch and precision) alone on one
  CUDA stream, inputs already on the GPU, no pre- or post-processing (`gpu_executor.ceiling`);
- daemon: ``yolostream run`` as a real service — N looping 1080p H.264 files decoded with NVDEC, frames
  through the CUDA-IPC rings and the letterbox kernel into the executor's batches, inference, NMS on the
  CPU, detections published over ZeroMQ — measured by a subscriber: detection messages per second over
  `--seconds`, after `--warmup` seconds from the first message (plan/graph warm-up and decoder start).

The model is YOLOv7 at 640 with random weights (`skeleton.py fill`: the real graph and cost, few boxes
above the threshold as with a trained model on real video). File sources are not paced, so the daemon
runs as fast as its slowest stage. Printed last: a table with both figures, their ratio, and the GPU
memory the daemon held (nvidia-smi). The daemon's log is written to `--log` (default: stderr).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_tools import gpu_used_mib, next_message, stop_daemon, timeline_summary

from streamer.output.client import Subscriber


def engine_ceiling(model: Path, batch: int, precision: str, batches: int) -> float:
    from gpu_executor import ceiling

    from streamer.engine.base import EngineOptions
    from streamer.engine.torch_device import TorchDeviceEngine

    engine = TorchDeviceEngine(model, EngineOptions(device="cuda", max_batch=batch, precision=precision))
    try:
        ceiling(engine, batch, 3)  # warm-up (cuDNN algorithm choice)
        return ceiling(engine, batch, batches)
    finally:
        engine.close()


def daemon_throughput(
    model: Path, clip: Path, streams: int, batch: int, precision: str, decoder: str,
    warmup: float, seconds: float, workdir: Path, log: Path | None, ring_slots: int = 4,
    per_process: int | None = None, engine_extra: str = "",
) -> tuple[float, float | None, int, dict]:  # fmt: skip
    """(detection messages/s, GPU MiB held by the daemon, streams that published, timeline summary)."""
    endpoint = f"ipc://{workdir}/pub.sock"
    sources = "".join(
        f"  - id: s{i}\n    url: {clip}\n    decoder: {decoder}\n    loop: true\n"
        f"    ring_slots: {ring_slots}\n"
        for i in range(streams)
    )
    groups = f"supervisor:\n  nvdec_streams_per_process: {per_process}\n" if per_process else ""
    config = workdir / "pipeline.yaml"
    config.write_text(
        groups
        + f"model:\n  onnx: {model}\nengine:\n  backend: torch\n  device: cuda\n  precision: {precision}\n"
        f"  max_batch: {batch}\n{engine_extra}sources:\n{sources}publish:\n  endpoint: {endpoint}\n"
        "logging:\n  stats_interval_s: 5\n  level: INFO\nmetrics:\n  enabled: false\n"
    )
    before = gpu_used_mib()
    out = log.open("w") if log else None
    seen: set[str] = set()
    timeline = workdir / f"timeline-{streams}.jsonl"
    env = {**os.environ, "YOLOSTREAM_TIMELINE": str(timeline)}
    with Subscriber(endpoint, events=True) as sub:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(config)], stdout=out, stderr=out, env=env
        )
        try:
            first = None
            deadline = time.monotonic() + 300
            while first is None:
                if (msg := next_message(sub, proc)) is None:
                    if time.monotonic() > deadline:
                        raise SystemExit("no detection within 300 s (see the daemon's log)")
                    continue
                if msg.type == "det":  # type: ignore[union-attr]
                    first = time.perf_counter()
                elif msg.event == "error":  # type: ignore[union-attr]
                    print(f"error event: {msg}", file=sys.stderr)
            while time.perf_counter() - first < warmup:
                next_message(sub, proc, 60)
            memory = gpu_used_mib()
            count, start, start_wall = 0, time.perf_counter(), time.time()
            while (now := time.perf_counter()) - start < seconds:
                msg = next_message(sub, proc, 60)
                if msg is not None and msg.type == "det":
                    count += 1
                    seen.add(msg.stream)  # type: ignore[union-attr]
            rate = count / (now - start)
            stages = timeline_summary(timeline, (start_wall, start_wall + now - start))
        finally:
            stop_daemon(proc)
            if out:
                out.close()
    held = None if memory is None or before is None else memory - before
    return rate, held, len(seen), stages


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[16])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--decoder", choices=("nvdec", "cpu"), default="nvdec")
    parser.add_argument("--ring-slots", type=int, default=4, help="frame slots per stream (daemon default 4)")
    parser.add_argument("--per-process", type=int, help="NVDEC streams per decoder process (default 8)")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clip", type=Path, help="a 1080p H.264 file (default: made here)")
    parser.add_argument("--model", type=Path, help="an ONNX model (default: random-weight YOLOv7)")
    parser.add_argument("--log", type=Path, help="the daemon's log file")
    parser.add_argument("--inflight", type=int, default=2, help="engine.inflight (batches in flight)")
    parser.add_argument("--concurrent", action="store_true", help="engine.concurrent_batches: true")
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", help="engine.batch_sizes (default: the daemon's)"
    )
    args = parser.parse_args()
    engine_extra = f"  inflight: {args.inflight}\n  concurrent_batches: {str(args.concurrent).lower()}\n"
    if args.batch_sizes:
        engine_extra += f"  batch_sizes: [{', '.join(map(str, args.batch_sizes))}]\n"
    from gpu_decode import make_clip
    from gpu_executor import random_yolov7

    with tempfile.TemporaryDirectory(prefix="gpu_pipeline.") as tmp:
        workdir = Path(tmp)
        model = args.model or random_yolov7(workdir / "yolov7-random.onnx")
        clip = args.clip or make_clip(workdir, seconds=10)
        started = time.perf_counter()
        ceil = engine_ceiling(model, args.batch, args.precision, batches=40)
        print(f"engine alone: {ceil:.1f} img/s ({time.perf_counter() - started:.0f} s)", flush=True)
        results = [
            (n, *daemon_throughput(
                model, clip, n, args.batch, args.precision, args.decoder,
                args.warmup, args.seconds, workdir, args.log, args.ring_slots, args.per_process,
                engine_extra,
            ))
            for n in args.streams
        ]  # fmt: skip
    from streamer.cuda.runtime import load_cudart

    name = load_cudart().cudaGetDeviceProperties(0)[1].name
    name = name.decode(errors="replace").rstrip("\0") if isinstance(name, bytes) else name
    print(f"GPU: {name}; 1080p H.264 ({args.decoder}), YOLOv7 640 random weights, "
          f"{args.precision}, batch {args.batch}, NVDEC streams per process "
          f"{args.per_process or 'default'}, {args.inflight} in flight "
          f"{'concurrently' if args.concurrent else 'one engine run at a time'}, "
          f"pid {os.getpid()}")  # fmt: skip
    header = ("streams", "publishing", "engine img/s", "daemon img/s", "ratio", "daemon GPU MiB",
              "batch", "form ms", "engine ms", "duty", "engine busy", "loop busy")  # fmt: skip
    print(" | ".join(header))
    for n, rate, memory, published, t in results:
        busy = 1 - t["loop"]["poll"] if t.get("loop") else float("nan")
        row = (
            str(n), str(published), f"{ceil:.1f}", f"{rate:.1f}", f"{rate / ceil:.2f}",
            "?" if memory is None else f"{memory:.0f}", f"{t.get('batch', 0):.1f}",
            f"{t['form'][0]:.1f}/{t['form'][1]:.1f}" if "form" in t else "-",
            f"{t['engine'][0]:.1f}/{t['engine'][1]:.1f}" if "engine" in t else "-",
            f"{t.get('duty', float('nan')):.2f}", f"{t.get('engine_busy', float('nan')):.0%}", f"{busy:.0%}",
        )  # fmt: skip
        print(" | ".join(f"{v:>{len(h)}}" for v, h in zip(row, header, strict=True)))


if __name__ == "__main__":
    main()
