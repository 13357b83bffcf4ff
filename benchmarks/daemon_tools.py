"""What the daemon benchmarks on the GPU host share: GPU memory in use, stopping the daemon, and the
summary of the inference worker's timeline (`streamer.workers.timeline`, at ``$YOLOSTREAM_TIMELINE``)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np


def gpu_used_mib() -> float | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=10,
    ).stdout.split()  # fmt: skip
    return float(out[0]) if out else None


def next_message(sub, proc: subprocess.Popen, timeout: float = 1.0):
    """The next message within `timeout` s, or None; raises SystemExit as soon as the daemon has exited
    (a daemon whose workers fail to start exits, and the benchmark must not wait out its timeout)."""
    from streamer.output.client import ReceiveTimeout

    deadline = time.monotonic() + timeout
    while True:
        try:
            return sub.recv(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
        except ReceiveTimeout:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited with code {proc.returncode} (see its log)") from None
            if time.monotonic() >= deadline:
                return None


def stop_daemon(proc: subprocess.Popen) -> None:
    """SIGTERM (the daemon drains and exits), SIGKILL if it has not within 60 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def timeline_summary(path: Path, window: tuple[float, float]) -> dict:
    """Means and p99s of the per-batch stages (ms) and the loop's phase shares, inside `window` (wall)."""
    if not path.is_file():
        return {}
    batches, loops = [], []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        (batches if r["kind"] == "batch" else loops).append(r)
    batches = [b for b in batches if window[0] <= b["publish_wall"] <= window[1]]
    if not batches:
        return {}
    stages = {
        "form": ("arrived_first", "formed"), "fill": ("formed", "filled"),
        "launch": ("submitted", "launched"),
        "queue": ("launched", "infer_start"), "engine": ("infer_start", "infer_end"),
        "copy": ("infer_end", "copy_out_end"),
        "nms": ("finished", "decoded"), "publish": ("decoded", "published"),
    }  # fmt: skip
    out: dict = {"batch": float(np.mean([b["n"] for b in batches])), "batches": len(batches)}
    for name, (a, b) in stages.items():
        values = [(r[b] - r[a]) * 1e3 for r in batches if a in r and b in r]
        if values:
            out[name] = (float(np.mean(values)), float(np.percentile(values, 99)))
    # The engine's duty cycle: the share of the window's span of GPU time that the engine ran (the rest is
    # the GPU idle or running something else between batches: the host not keeping up, or contention).
    timed = [b for b in batches if "infer_start" in b]
    if len(timed) > 1:
        span = max(b["infer_end"] for b in timed) - min(b["infer_start"] for b in timed)
        out["duty"] = (
            sum(b["infer_end"] - b["infer_start"] for b in timed) / span if span > 0 else float("nan")
        )
        # The share of the span with at least one batch on the engine: below 1, the GPU waited for the
        # daemon (no batch ready); at 1 with a low throughput, the engine ran slower than alone.
        covered, end = 0.0, float("-inf")
        for b in sorted(timed, key=lambda b: b["infer_start"]):
            start = max(b["infer_start"], end)
            if b["infer_end"] > start:
                covered += b["infer_end"] - start
            end = max(end, b["infer_end"])
        out["engine_busy"] = covered / span if span > 0 else float("nan")
    loops = loops[-max(1, int((window[1] - window[0]) / 2)) :]
    total = sum(r["seconds"] for r in loops) or 1.0
    out["loop"] = {
        p: sum(r[p] for r in loops) / total for p in ("poll", "accept", "collect", "dispatch", "other")
    }
    return out
