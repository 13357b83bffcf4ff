"""Where a worker's Python memory grows: tracemalloc diffs written while it runs (a developer's tool, #18).

With ``$YOLOSTREAM_TRACEMALLOC`` naming a folder, a worker traces its allocations and, every
``$YOLOSTREAM_TRACEMALLOC_S`` seconds (60), appends to ``<folder>/<role>-<pid>.txt`` its resident memory,
the traced total and the allocation sites that grew most since the first interval (the baseline: start-up
allocations are not growth). Tracing begins only once the worker says it is warm (`ready()`, e.g. past its
first batch): tracemalloc slows every allocation, and an engine traced while it converts and compiles the
model takes minutes longer to start (a GPU soak saw no frame published in 300 s).

A site that grows at every interval is a leak; RSS growing while the traced
total does not points below Python (a driver, a decoder library, the allocator).
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

TRACEMALLOC_ENV = "YOLOSTREAM_TRACEMALLOC"
INTERVAL_ENV = "YOLOSTREAM_TRACEMALLOC_S"
FRAMES = 6  # traceback depth per allocation: enough to see the caller of a library's allocation
TOP = 12


def start(role: str, ready: Callable[[], bool] = lambda: True) -> None:
    """Trace this process once `ready()` is true, when the environment asks for it; else do nothing."""
    folder = os.environ.get(TRACEMALLOC_ENV)
    if not folder:
        return
    interval = float(os.environ.get(INTERVAL_ENV, "60"))
    out = Path(folder) / f"{role}-{os.getpid()}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    threading.Thread(target=_report, args=(out, interval, ready), name="memtrace", daemon=True).start()


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _report(out: Path, interval: float, ready: Callable[[], bool]) -> None:
    while not ready():
        time.sleep(1.0)
    tracemalloc.start(FRAMES)
    started = time.monotonic()
    time.sleep(interval)
    baseline = tracemalloc.take_snapshot()
    base_rss = _rss_mib()
    while True:
        time.sleep(interval)
        snapshot = tracemalloc.take_snapshot()
        traced, _ = tracemalloc.get_traced_memory()
        lines = [
            f"--- t={time.monotonic() - started:.0f}s rss={_rss_mib():.1f}MiB "
            f"(+{_rss_mib() - base_rss:.1f} since baseline) traced={traced / 2**20:.1f}MiB"
        ]
        for stat in snapshot.compare_to(baseline, "traceback")[:TOP]:
            if stat.size_diff <= 0:
                break
            frames = reversed(stat.traceback)  # the allocating line first, then its callers
            where = " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in frames)
            lines.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {where}")
        with out.open("a") as f:
            f.write("\n".join(lines) + "\n")
