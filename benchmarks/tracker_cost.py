"""What tracking costs the inference worker: milliseconds per `ByteTracker.update` at 10, 50 and 150 objects.

Each object moves on a straight path with jittered boxes; a few are missed each frame and a few false
positives appear, so every stage of the association has work. Timed over `--frames` frames after a
warm-up (the tracks exist), median and p99 per update; then the median cost of following the tracked
boxes through two zones and two lines (`streamer.tracking.zones.ZoneLineCounter.update`, what a stream with
zones and lines adds per frame).

Usage: python benchmarks/tracker_cost.py [--frames 600] [--objects 10,50,150]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from streamer.config.analytics import LineConfig, ZoneConfig
from streamer.tracking import ByteTracker
from streamer.tracking.zones import ZoneLineCounter

ZONES = (
    ZoneConfig(name="left", polygon=((100, 100), (900, 100), (900, 1000), (100, 1000))),
    ZoneConfig(name="ring", polygon=((1000, 200), (1800, 300), (1700, 900), (1100, 1000), (1300, 600))),
)
LINES = (
    LineConfig(name="mid", points=((960, 0), (960, 1080))),
    LineConfig(name="low", points=((0, 700), (1920, 800))),
)


def frames(n_objects: int, n_frames: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    start = rng.uniform([0, 0], [1920, 1080], (n_objects, 2))
    velocity = rng.uniform(-4, 4, (n_objects, 2))
    size = rng.uniform(30, 90, (n_objects, 1)) * np.array([[1.0, 2.0]])
    out = []
    for f in range(n_frames):
        centre = (start + velocity * f) % np.array([1920, 1080])
        boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
        boxes += rng.normal(0, 1.5, boxes.shape)
        scores = rng.uniform(0.3, 0.95, (n_objects, 1))
        rows = np.concatenate([boxes, scores, np.zeros((n_objects, 1))], axis=1)
        rows = rows[rng.uniform(size=n_objects) > 0.05]  # misses
        false = rng.uniform([0, 0, 0, 0, 0.1, 0], [1800, 1000, 0, 0, 0.7, 0], (3, 6))
        false[:, 2:4] = false[:, :2] + 60
        out.append(np.concatenate([rows, false]))
    return out


def measure(n_objects: int, n_frames: int) -> tuple[float, float, float, float]:
    """``(median ms, p99 ms, zones' median ms, confirmed tracks at the end)``."""
    data = frames(n_objects, n_frames + 30)
    tracker = ByteTracker()
    zones = ZoneLineCounter(ZONES, LINES, max_lost_s=1.0)
    times, zone_times = [], []
    for f, dets in enumerate(data):
        t0 = time.perf_counter()
        ids = tracker.update(dets, f / 30, f / 30)
        t1 = time.perf_counter()
        zones.update(tracker.time, 1920, 1080, dets[:, :4], dets[:, 5].astype(np.int64), ids)
        if f >= 30:
            times.append(t1 - t0)
            zone_times.append(time.perf_counter() - t1)
    ms, zone_ms = np.array(times) * 1000, np.array(zone_times) * 1000
    return (
        float(np.median(ms)),
        float(np.percentile(ms, 99)),
        float(np.median(zone_ms)),
        float(tracker.confirmed),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--objects", default="10,50,150")
    args = parser.parse_args()
    print(f"ByteTracker.update, {args.frames} frames after 30 of warm-up")
    print("| objects | tracker median ms | tracker p99 ms | + 2 zones, 2 lines median ms | tracks |")
    print("|---:|---:|---:|---:|---:|")
    for n in (int(x) for x in args.objects.split(",")):
        median, p99, zones, tracks = measure(n, args.frames)
        print(f"| {n} | {median:.3f} | {p99:.3f} | {zones:.3f} | {tracks:.0f} |")


if __name__ == "__main__":
    main()
