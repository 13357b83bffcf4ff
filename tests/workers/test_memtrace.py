"""The allocation-growth report of `YOLOSTREAM_TRACEMALLOC` names the line that grows (#18)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

GROWER = """
import time
from streamer.workers import memtrace
memtrace.start("grower")
kept = []
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    kept.append(bytearray(64 * 1024))  # the leak: 64 KiB every 10 ms
    time.sleep(0.01)
"""


def test_the_report_names_the_allocation_that_grows(tmp_path: Path) -> None:
    env = {**os.environ, "YOLOSTREAM_TRACEMALLOC": str(tmp_path), "YOLOSTREAM_TRACEMALLOC_S": "0.5"}
    proc = subprocess.Popen([sys.executable, "-c", GROWER], env=env)
    try:
        deadline = time.monotonic() + 60
        report: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            report = list(tmp_path.glob(f"grower-{proc.pid}.txt"))
            if report and report[0].read_text().count("--- t=") >= 2:
                break
            time.sleep(0.2)
        assert report, "no report was written"
        text = report[0].read_text()
    finally:
        proc.kill()
        proc.wait()
    last = text.rsplit("--- t=", 1)[1].splitlines()
    assert "rss=" in last[0] and "traced=" in last[0]
    assert "<string>:" in last[1], last  # the biggest growth is the bytearray line of the script
    assert float(last[1].split()[0]) > 0


WAITER = """
import threading, time, tracemalloc
from streamer.workers import memtrace
warm = threading.Event()
memtrace.start("waiter", ready=warm.is_set)
time.sleep(2.5)
print("before", tracemalloc.is_tracing(), flush=True)
warm.set()
deadline = time.monotonic() + 30
while not tracemalloc.is_tracing() and time.monotonic() < deadline:
    time.sleep(0.05)
print("after", tracemalloc.is_tracing(), flush=True)
"""


def test_tracing_waits_until_the_worker_is_warm(tmp_path: Path) -> None:
    # An engine traced while it compiles starts minutes late: nothing is traced before `ready()`.
    env = {**os.environ, "YOLOSTREAM_TRACEMALLOC": str(tmp_path), "YOLOSTREAM_TRACEMALLOC_S": "0.5"}
    out = subprocess.run([sys.executable, "-c", WAITER], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["before", "False", "after", "True"], out.stderr
