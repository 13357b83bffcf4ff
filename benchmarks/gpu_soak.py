"""GPU soak: N live 1080p30 NVDEC streams for a while, and which process's memory grows (#18).

    python benchmarks/gpu_soak.py --streams 16 --minutes 8 --sample 20 --warmup 120 --out $OUT

The daemon of `gpu_live.py` (N copies of one 1080p30 H.264 clip, ``realtime: true``, ``loop: true``, NVDEC,
YOLOv7-640 random weights, torch fp16 compiled, batch 16) runs for ``--minutes`` while a subscriber counts
what arrives. Every ``--sample`` seconds: the resident memory of the supervisor, the inference worker and
each decoder-group process (told apart by the pids the daemon logs), and the GPU memory each process holds
(``nvidia-smi --query-compute-apps``). Printed last: per process, the least-squares trend after the
warm-up in MiB per hour, beside its range. ``--tracemalloc`` also runs every worker under
`streamer.workers.memtrace` (its reports go to ``--out``/memtrace/: which Python allocation sites grew).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon_tools import stop_daemon
from gpu_live import FPS, receive_until, wait_for_streams, write_config

from streamer.observability.process_memory import gpu_memory_by_pid, rss_mb
from streamer.output.client import Subscriber


def roles(log: str, daemon_pid: int) -> dict[int, str]:
    """pid -> role, from the daemon's log (the newest process of each role wins)."""
    found = {daemon_pid: "supervisor"}
    for pid in re.findall(r"inference worker (?:ready|restarted) \(pid (\d+)\)", log):
        found[int(pid)] = "inference"
    for name, pid in re.findall(r"decoder group (\S+): source worker started \(pid (\d+)\)", log):
        found[int(pid)] = f"decoders-{name}"
    for stat in Path("/proc").glob("[0-9]*/stat"):  # the other children: a source worker of its own
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == daemon_pid and int(stat.parent.name) not in found:
            found[int(stat.parent.name)] = f"worker-{stat.parent.name}"
    return found


def trend(points: list[tuple[float, float]]) -> float:
    if len(points) < 3:
        return float("nan")
    t, v = np.asarray(points).T
    return float(np.polyfit(t / 3600, v, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=8)
    parser.add_argument("--sample", type=float, default=20)
    parser.add_argument("--warmup", type=float, default=120, help="seconds left out of the trend")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("gpu-logs/soak"))
    parser.add_argument("--cpu", action="store_true", help="a smoke test of this script without a GPU")
    args = parser.parse_args()
    # What gpu_live's write_config reads (the live benchmark's defaults).
    args.sizes, args.batch, args.batch_timeout_ms, args.precision, args.compile = None, 16, 10.0, "fp16", True
    from gpu_decode import make_clip
    from gpu_executor import random_yolov7

    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLOSTREAM_CACHE", "/tmp/yolostream-cache")
    env = dict(os.environ)
    if args.tracemalloc:
        env["YOLOSTREAM_TRACEMALLOC"] = str(args.out / "memtrace")
        env["YOLOSTREAM_TRACEMALLOC_S"] = str(args.sample * 3)
    samples: list[dict] = []
    published = 0
    with tempfile.TemporaryDirectory(prefix="gpu_soak.") as tmp:
        workdir = Path(tmp)
        model = random_yolov7(workdir / "yolov7-random.onnx")
        clip = make_clip(workdir, seconds=10)
        endpoint = f"ipc://{workdir}/pub.sock"
        config = workdir / "soak.yaml"
        write_config(config, model, clip, args.streams, args, endpoint)
        if args.cpu:
            text = config.read_text().replace("decoder: nvdec", "decoder: cpu")
            config.write_text(text.replace("backend: torch", "backend: onnxruntime").replace("cuda", "cpu"))
        log_path = args.out / "daemon.log"
        with log_path.open("w") as log, Subscriber(endpoint, events=True) as sub:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamer", "run", str(config)], stdout=log, stderr=log, env=env
            )
            try:
                wait_for_streams(sub, proc, args.streams, timeout=300)

                def count(_msg) -> None:
                    nonlocal published
                    published += 1

                start = time.perf_counter()
                while (now := time.perf_counter()) < start + args.minutes * 60:
                    receive_until(sub, proc, now + args.sample, on_det=count)
                    pids = roles(log_path.read_text(), proc.pid)
                    gpu = gpu_memory_by_pid()
                    sample = {"t": round(time.perf_counter() - start, 1), "published": published, "rss": {}}
                    for pid, role in pids.items():
                        if (rss := rss_mb(pid)) is not None:
                            sample["rss"][role] = rss
                            if pid in gpu:
                                sample.setdefault("gpu", {})[role] = gpu[pid]
                    samples.append(sample)
                    print(json.dumps(sample), flush=True)
            finally:
                stop_daemon(proc)
    (args.out / "samples.json").write_text(json.dumps(samples, indent=1))
    elapsed = samples[-1]["t"] if samples else 0
    print(f"\n{args.streams} x 1080p30 NVDEC live, {elapsed / 60:.1f} min; published {published} "
          f"({published / max(elapsed, 1):.1f}/s of {args.streams * FPS} wanted)")  # fmt: skip
    print(f"trend after {args.warmup:.0f} s (least squares, MiB/h), range (min..max MiB):")
    print("| process | RSS MiB/h | RSS range | GPU MiB/h | GPU range |")
    print("|---|---:|---|---:|---|")
    steady = [s for s in samples if s["t"] >= args.warmup]
    names = sorted({r for s in steady for r in s["rss"]}, key=lambda r: (r != "supervisor", r))
    for role in names:
        cells = []
        for kind in ("rss", "gpu"):
            pts = [(s["t"], s[kind][role]) for s in steady if role in s.get(kind, {})]
            vals = [v for _, v in pts]
            cells += [f"{trend(pts):+.2f}", f"{min(vals):.0f}..{max(vals):.0f}"] if vals else ["-", "-"]
        print(f"| {role} | " + " | ".join(cells) + " |")
    total = [(s["t"], sum(s["rss"].values())) for s in steady]
    if total:
        sums = [v for _, v in total]
        print(f"| all (sum) | {trend(total):+.2f} | {min(sums):.0f}..{max(sums):.0f} | | |")


if __name__ == "__main__":
    main()
