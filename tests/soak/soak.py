"""Soak: the daemon for a long time over looping files and an RTSP camera that restarts every few minutes.

    python -m tests.soak.soak --minutes 20 --restart-every 180 --out soak-report

Runs `yolostream run` (real processes) with two looping, paced file streams and one RTSP stream served by
the test RTSP server (GStreamer, Debian's packages), kills and restarts that server every
`--restart-every` seconds, and a real subscriber counts what arrives. Every `--sample` seconds it records
the resident memory of the supervisor, the inference worker and each source worker (from /proc; workers
are told apart by the pids in `started` events and the log) and, on a GPU host, the device memory in use.
At the end it prints memory over time and a least-squares trend per process after a warm-up (MiB per
hour): "no growth" means the trend is small next to the noise. The model is the oracle model (a box on the
brightest spot), so inference costs little and frames flow at the full paced rate: the most work per
minute for the daemon's own code, which is what a leak would grow with.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np

from streamer.output.client import ReceiveTimeout
from streamer.output.protocol import DetectionsMessage, EventMessage
from tests.support.daemon import child_pids, start_daemon
from tests.support.media import bright_spot_frames, write_clip
from tests.support.models import write_oracle_model
from tests.support.rtsp import RtspServer, require_rtsp_server

SIZE = (640, 360)


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def gpu_used_mib() -> float | None:
    try:
        import subprocess

        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        return float(out.split()[0])
    except Exception:
        return None


def trend(times: list[float], values: list[float]) -> float:
    """Least-squares slope in MiB per hour."""
    if len(times) < 3:
        return float("nan")
    slope = np.polyfit(np.asarray(times) / 3600, np.asarray(values), 1)[0]
    return float(slope)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--restart-every", type=float, default=180, help="RTSP server restart period, s")
    parser.add_argument("--sample", type=float, default=30, help="memory sampling period, s")
    parser.add_argument("--warmup", type=float, default=120, help="seconds left out of the trend")
    parser.add_argument("--out", type=Path, default=Path("soak-report"))
    args = parser.parse_args()
    require_rtsp_server()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    spots = [(float(rng.uniform(80, 560)), float(rng.uniform(60, 300))) for _ in range(50)]
    clip_mp4 = write_clip(out / "loop.mp4", bright_spot_frames(SIZE, spots, radius=10), fps=25)
    clip_ts = write_clip(out / "cam.ts", bright_spot_frames(SIZE, spots[::-1], radius=10), fps=25, gop=25)
    model = write_oracle_model(out / "oracle.onnx", input_size=(320, 320))

    server = RtspServer({"/cam": clip_ts}, out / "rtsp.log").start()
    config = (
        f"model:\n  onnx: {model}\nengine:\n  max_batch: 4\nsources:\n"
        f"  - id: file1\n    url: {clip_mp4}\n    loop: true\n    realtime: true\n"
        f"  - id: file2\n    url: {clip_mp4}\n    loop: true\n    realtime: true\n"
        f"  - id: cam\n    url: {server.url('/cam')}\n    reconnect:\n      initial_s: 0.5\n      max_s: 5\n"
        "      down_after: 3\n      down_retry_s: 5\n"
        "publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 30\n"
    )
    daemon = start_daemon(out, config, name="soak")
    samples: list[dict[str, float | None]] = []
    counts = {"file1": 0, "file2": 0, "cam": 0}
    events: dict[str, int] = {}
    start = time.monotonic()
    next_sample = start
    next_restart = start + args.restart_every
    restarts = 0
    try:
        while (now := time.monotonic()) < start + args.minutes * 60:
            try:
                msg = daemon.sub.recv(timeout=0.5)
                if isinstance(msg, DetectionsMessage):
                    counts[msg.stream] = counts.get(msg.stream, 0) + 1
                elif isinstance(msg, EventMessage):
                    key = f"{msg.stream}:{msg.event}"
                    events[key] = events.get(key, 0) + 1
            except ReceiveTimeout:
                pass
            if daemon.proc.poll() is not None:
                print("the daemon exited early:", daemon.proc.returncode, file=sys.stderr)
                print(daemon.log()[-3000:], file=sys.stderr)
                return 1
            if now >= next_restart:
                server.kill()
                time.sleep(5)
                server.restart()
                restarts += 1
                next_restart = now + args.restart_every
            if now >= next_sample:
                next_sample = now + args.sample
                log = daemon.log()
                inference = [
                    int(p) for p in re.findall(r"inference worker (?:ready|restarted) \(pid (\d+)\)", log)
                ]
                sample: dict[str, float | None] = {
                    "t": round(now - start, 1),
                    "supervisor": rss_mib(daemon.pid),
                }
                sample["inference"] = rss_mib(inference[-1]) if inference else None
                kids = child_pids(daemon.pid) - set(inference)
                sources = [r for p in kids if (r := rss_mib(p)) is not None and r > 30]  # skip small helpers
                sample["sources_total"] = round(sum(sources), 1)
                sample["gpu"] = gpu_used_mib()
                sample["published"] = sum(counts.values())
                samples.append(sample)
                print(json.dumps(sample), flush=True)
        code = daemon.stop(signal.SIGTERM, timeout=60)
    finally:
        daemon.close()
        server.close()
    (out / "samples.json").write_text(json.dumps(samples, indent=1))
    print(f"\nsoak: {args.minutes:.0f} min, RTSP server restarted {restarts} times, daemon exit code {code}")
    print(f"messages: {counts}; events: {events}")
    print("\n| t (s) | supervisor MiB | inference MiB | sources MiB (sum) | GPU MiB | published |")
    print("|---:|---:|---:|---:|---:|---:|")
    for s in samples:
        print(
            "| "
            + " | ".join(
                "-" if s[k] is None else f"{s[k]:.1f}" if isinstance(s[k], float) else str(s[k])
                for k in ("t", "supervisor", "inference", "sources_total", "gpu", "published")
            )
            + " |"
        )
    steady = [s for s in samples if float(s["t"] or 0) >= args.warmup]
    print("\ntrend after the warm-up (least squares, MiB per hour):")
    for key in ("supervisor", "inference", "sources_total", "gpu"):
        pts = [(float(s["t"] or 0), float(s[key])) for s in steady if s[key] is not None]  # type: ignore[arg-type]
        if pts:
            values = [v for _, v in pts]
            print(f"  {key:14} {trend([t for t, _ in pts], values):+7.2f} MiB/h   "
                  f"(min {min(values):.1f}, max {max(values):.1f})")  # fmt: skip
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
