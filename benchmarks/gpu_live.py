"""Live streams per GPU: the daemon with N cameras' worth of 1080p30 H.264, and what it delivers.

    python benchmarks/gpu_live.py --streams 4 16 32 48 64 --seconds 60 --out $OUT

One `yolostream run` plays N copies of one 1080p30 clip as cameras (``realtime: true``, ``loop: true``,
``decoder: nvdec``: the newest frame wins when inference is behind), YOLOv7-640 with random weights
(`skeleton.py fill`), the torch engine as configured by the flags (default: fp16, compiled, batch 16).
The stream counts are visited in order on one daemon: the config is rewritten and the daemon reloaded
(SIGHUP) to add streams, so the engine is compiled once. For each N, after `--warmup` seconds, a ZeroMQ
subscriber counts for `--seconds`:

- frames/s delivered and wanted (N × the clip's rate), the slowest stream's frames/s;
- capture→publish latency (``publish_ts - capture_ts``; a paced file's frame is captured when it is
  due) p50 / p99 / max;
- frames dropped: gaps in each stream's frame index (every frame a source decodes has the next index,
  so a gap is a frame not received, dropped anywhere: ring full, inference behind, stale slot, or lost
  between the daemon and this subscriber); of those, the messages the daemon did publish but this
  subscriber missed (gaps in the stream's ``seq``, which events share) are shown in brackets;
- the GPU memory the daemon holds (nvidia-smi);
- from the worker's timeline (`streamer.workers.timeline`): mean batch, and per batch the mean and p99
  of: waiting for the batch to form, letterbox, the launcher's engine launch, the engine on the GPU, the
  output copy, the CPU's NMS and publish; and the share of the loop thread's time spent in each phase.

Then the engine alone (the same `TorchDeviceEngine` variant, batch `--batch`, inputs on the GPU) for the
ceiling. The daemon's log goes to `--out`/daemon.log. The process is watched: if the daemon exits, the
benchmark says so instead of waiting.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_tools import gpu_used_mib, next_message, stop_daemon, timeline_summary

from streamer.output.client import Subscriber

FPS = 30


@dataclass
class StreamCount:
    frames: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)


def write_config(
    path: Path, model: Path, clip: Path, streams: int, args: argparse.Namespace, endpoint: str
) -> None:
    sources = "".join(
        f"  - id: s{i}\n    url: {clip}\n    decoder: nvdec\n    loop: true\n    realtime: true\n"
        for i in range(streams)
    )
    sizes = f"  batch_sizes: [{', '.join(map(str, args.sizes))}]\n" if args.sizes else ""
    path.write_text(
        f"model:\n  onnx: {model}\nengine:\n  backend: torch\n  device: cuda\n  precision: {args.precision}\n"
        f"  max_batch: {args.batch}\n  compile: {'on' if args.compile else 'off'}\n{sizes}"
        f"  batch_timeout_ms: {args.batch_timeout_ms}\n"
        f"sources:\n{sources}publish:\n  endpoint: {endpoint}\n"
        "logging:\n  stats_interval_s: 10\n  level: INFO\nmetrics:\n  enabled: false\n"
        + (f"supervisor:\n  nvdec_streams_per_process: {args.per_process}\n" if args.per_process else "")
    )


def receive_until(sub: Subscriber, proc: subprocess.Popen, deadline: float, on_det=None, on_evt=None) -> None:
    while time.perf_counter() < deadline:
        if (msg := next_message(sub, proc)) is None:
            continue
        if msg.type == "det":  # type: ignore[union-attr]
            if on_det is not None:
                on_det(msg)
        else:
            if on_evt is not None:
                on_evt(msg)
            if msg.event == "error":  # type: ignore[union-attr]
                print(f"error event: {msg.stream}: {msg.message}", file=sys.stderr)  # type: ignore[union-attr]


def wait_for_streams(sub: Subscriber, proc: subprocess.Popen, streams: int, timeout: float) -> float:
    """Wait until every stream s0..s{streams-1} has published; the seconds it took."""
    started = time.perf_counter()
    seen: set[str] = set()
    while len(seen) < streams:
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"only {len(seen)} of {streams} streams published within {timeout:.0f} s")
        msg = next_message(sub, proc)
        if msg is not None and msg.type == "det":
            seen.add(msg.stream)
    return time.perf_counter() - started


def measure(sub: Subscriber, proc: subprocess.Popen, streams: int, seconds: float) -> dict:
    counts: dict[str, StreamCount] = {f"s{i}": StreamCount() for i in range(streams)}
    latencies: list[float] = []

    def on_det(msg) -> None:
        c = counts.get(msg.stream)
        if c is not None:
            c.frames.append(msg.frame)
            c.seqs.append(msg.seq)
            latencies.append(msg.publish_ts - msg.capture_ts)

    events: dict[str, int] = {}

    def on_evt(msg) -> None:  # events share the stream's seq: a gap is only what did not arrive
        c = counts.get(msg.stream)
        if c is not None:
            c.seqs.append(msg.seq)
        events[msg.event] = events.get(msg.event, 0) + 1

    start_wall, start = time.time(), time.perf_counter()
    receive_until(sub, proc, start + seconds, on_det, on_evt)
    elapsed = time.perf_counter() - start
    dropped = lost = 0
    rates = []
    missing: dict[str, list[int]] = {}  # the first few frame indices each stream did not publish
    for stream, c in counts.items():
        rates.append(len(c.frames) / elapsed)
        if c.frames:
            dropped += (max(c.frames) - min(c.frames) + 1) - len(set(c.frames))
            if gaps := sorted(set(range(min(c.frames), max(c.frames) + 1)) - set(c.frames))[:5]:
                missing[stream] = gaps
            seqs = np.sort(np.asarray(c.seqs))
            lost += int(np.sum(np.maximum(np.diff(seqs) - 1, 0))) if len(seqs) > 1 else 0
    lat = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    return {
        "streams": streams, "seconds": elapsed, "window": (start_wall, start_wall + elapsed),
        "delivered": sum(len(c.frames) for c in counts.values()) / elapsed, "wanted": streams * FPS,
        "slowest": min(rates), "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
        "max": float(lat.max()), "dropped": dropped, "lost": lost, "missing": missing, "events": events,
    }  # fmt: skip


def engine_alone(model: Path, args: argparse.Namespace) -> tuple[float, str]:
    from gpu_executor import ceiling

    from streamer.engine.base import EngineOptions
    from streamer.engine.torch_device import TorchDeviceEngine

    options = EngineOptions(device="cuda", max_batch=args.batch, precision=args.precision)
    engine = TorchDeviceEngine(model, options, compile="on" if args.compile else "off", sizes=args.sizes)
    try:
        ceiling(engine, args.batch, 5)
        return ceiling(engine, args.batch, 100), engine.variant
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[4, 16, 32, 48, 64])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sizes", type=int, nargs="+", help="engine.batch_sizes (default: the engine's)")
    parser.add_argument("--batch-timeout-ms", type=float, default=10.0)
    parser.add_argument("--per-process", type=int, help="supervisor.nvdec_streams_per_process (default: 8)")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--model", type=Path, help="an ONNX model (default: YOLOv7 with random weights)")
    parser.add_argument("--clip", type=Path, help="a 1080p30 H.264 file (default: made here)")
    parser.add_argument("--out", type=Path, default=Path("gpu-logs"))
    args = parser.parse_args()
    from gpu_decode import make_clip
    from gpu_executor import random_yolov7

    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLOSTREAM_CACHE", "/tmp/yolostream-cache")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_live.") as tmp:
        workdir = Path(tmp)
        model = args.model or random_yolov7(workdir / "yolov7-random.onnx")
        clip = args.clip or make_clip(workdir, seconds=10)
        endpoint = f"ipc://{workdir}/pub.sock"
        config = workdir / "live.yaml"
        timeline = args.out / "timeline.jsonl"
        timeline.unlink(missing_ok=True)
        env = {**os.environ, "YOLOSTREAM_TIMELINE": str(timeline)}
        write_config(config, model, clip, args.streams[0], args, endpoint)
        before = gpu_used_mib()
        log = (args.out / "daemon.log").open("w")
        with Subscriber(endpoint, events=True) as sub:
            started = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamer", "run", str(config)], stdout=log, stderr=log, env=env
            )
            try:
                for n in args.streams:
                    if n != args.streams[0]:
                        write_config(config, model, clip, n, args, endpoint)
                        proc.send_signal(signal.SIGHUP)
                    took = wait_for_streams(sub, proc, n, timeout=300 if n == args.streams[0] else 120)
                    if n == args.streams[0]:
                        print(
                            f"daemon publishing {n} streams {time.perf_counter() - started:.0f} s in",
                            flush=True,
                        )
                    receive_until(sub, proc, time.perf_counter() + args.warmup)
                    row = measure(sub, proc, n, args.seconds)
                    used = gpu_used_mib()
                    row["gpu_mib"] = None if used is None or before is None else used - before
                    row["timeline"] = timeline_summary(timeline, row["window"])
                    row["ready_s"] = took
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            finally:
                stop_daemon(proc)
                log.close()
        ceil, variant = engine_alone(model, args)
    (args.out / "gpu_live.json").write_text(
        json.dumps({"rows": rows, "engine_alone": ceil, "variant": variant}, indent=1)
    )
    import torch

    print(f"\nGPU {torch.cuda.get_device_name(0)}; 1080p30 H.264 on NVDEC, realtime; YOLOv7-640 random "
          f"weights, torch {variant}, max batch {args.batch}; {args.seconds:.0f} s per row after "
          f"{args.warmup:.0f} s; NVDEC streams per process {args.per_process or 8}")  # fmt: skip
    print(f"engine alone, batch {args.batch}: {ceil:.0f} img/s = {ceil / FPS:.0f} streams' worth")
    print(
        "streams | delivered/wanted fps | slowest | p50/p99/max ms | dropped (lost) | GPU MiB | batch | "
        "form fill launch engine nms+pub ms (mean/p99) | loop busy"
    )
    for r in rows:
        t = r["timeline"]

        def st(k: str, t: dict = t) -> str:
            return f"{t[k][0]:.1f}/{t[k][1]:.1f}" if k in t else "-"

        busy = 1 - t["loop"]["poll"] if t.get("loop") else float("nan")
        nmspub = (
            f"{t['nms'][0] + t['publish'][0]:.1f}/{t['nms'][1] + t['publish'][1]:.1f}" if "nms" in t else "-"
        )
        print(
            f"{r['streams']:7} | {r['delivered']:7.0f} / {r['wanted']:5.0f} | {r['slowest']:7.1f} | "
            f"{r['p50']:4.0f}/{r['p99']:4.0f}/{r['max']:4.0f} | {r['dropped']:6} ({r['lost']}) | "
            f"{'?' if r['gpu_mib'] is None else round(r['gpu_mib'])} | {t.get('batch', 0):.1f} | "
            f"{st('form')} {st('fill')} {st('launch')} {st('engine')} {nmspub} | {busy:.0%}"
        )


if __name__ == "__main__":
    main()
