"""What a process holds: its resident memory (from /proc) and its GPU memory (nvidia-smi's per-process
figure). Read by the supervisor's memory recycling, the metrics endpoint and the soak benchmark."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of process `pid` in MiB (from /proc), or None if unknown."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_GPU_CACHE_S = 2.0
_gpu_seen: tuple[float, dict[int, float]] = (-_GPU_CACHE_S, {})


def gpu_memory_by_pid() -> dict[int, float]:
    """GPU memory in MiB used by each process that has a CUDA context, by pid; {} without nvidia-smi.

    Read with ``nvidia-smi --query-compute-apps`` (NVML through a library is not a dependency), at most
    every 2 s. In a container without its own PID namespace view, the driver reports host pids, which
    match nothing here: then no process shows GPU memory.
    """
    global _gpu_seen
    now = time.monotonic()
    if now - _gpu_seen[0] < _GPU_CACHE_S:
        return _gpu_seen[1]
    used: dict[int, float] = {}
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        query = [smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(query, capture_output=True, text=True, timeout=5, check=True).stdout
            used = parse_compute_apps(out)
    _gpu_seen = (now, used)
    return used


def parse_compute_apps(text: str) -> dict[int, float]:
    """``pid, used_memory`` lines (MiB) → {pid: MiB}, summed over GPUs; lines it cannot read are skipped."""
    used: dict[int, float] = {}
    for line in text.splitlines():
        pid, _, mib = line.partition(",")
        with contextlib.suppress(ValueError):
            used[int(pid)] = used.get(int(pid), 0.0) + float(mib)
    return used
