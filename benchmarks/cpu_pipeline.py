"""Throughput of the whole daemon on the CPU vs the ONNX Runtime ceiling vs a naive single-thread loop.

For each model, on the same clip (1280x720 H.264 made from tinycoco images):

- ceiling: ONNX Runtime alone (the daemon's engine class) on ready batches of the daemon's batch size,
  measured before and after the daemon run, the higher kept;
- naive:   one thread, frame by frame: decode (PyAV) → letterbox → infer (batch 1) → NMS;
- daemon:  ``yolostream run`` as a real multi-process service with N file streams (not paced), measured
           by a ZeroMQ subscriber from its first to its last detection message.

With ``--tracking both`` the daemon runs four times back to back, tracking off, on, off, on
(``tracking: {enabled: true}``, every stream), and the table shows the mean of each and their ratio.

Usage: python benchmarks/cpu_pipeline.py [--models yolov5s-coco,yolov7-coco] [--streams 2] [--frames 60]
                                         [--tracking off|on|both]
Prints a table last; needs ../shared (models and tinycoco images).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from streamer.engine import EngineOptions, load_engine
from streamer.output.client import Subscriber
from streamer.postprocess.nms import NmsParams, detect_image, to_source_frame
from streamer.preprocess import letterbox, to_input_tensor

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def make_clip(path: Path, frames: int, size: tuple[int, int]) -> Path:
    images = sorted((SHARED / "data/tinycoco/images/val2017").glob("*.jpg"))
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=25, options={"preset": "veryfast"})
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    for i in range(frames):
        bgr = cv2.resize(cv2.imread(str(images[(i // 5) % len(images)])), size)
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def ceiling(model: Path, batch: int, seconds: float) -> float:
    """ONNX Runtime alone, through the daemon's own engine class (same session options), fed ready batches."""
    engine = load_engine("onnxruntime", model, EngineOptions(max_batch=batch))
    x = np.random.default_rng(0).random((batch, 3, 640, 640), dtype=np.float32)
    engine.infer(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        engine.infer(x)
        n += batch
    return n / (time.perf_counter() - start)


def naive(model: Path, clip: Path) -> float:
    engine = load_engine("onnxruntime", model, EngineOptions(max_batch=1))
    params = NmsParams()
    n, start = 0, time.perf_counter()
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            boxed, geometry = letterbox(rgb, 640, 640)
            out = engine.infer(to_input_tensor(boxed, swap_rb=False)[None])
            to_source_frame(detect_image(out[0], params), geometry)
            n += 1
    return n / (time.perf_counter() - start)


def daemon(
    model: Path, clip: Path, streams: int, frames: int, batch: int, workdir: Path, tracking: bool = False
) -> float:
    port = 20000 + os.getpid() % 20000
    endpoint = f"tcp://127.0.0.1:{port}"
    sources = "".join(f"  - id: s{i}\n    url: {clip}\n" for i in range(streams))
    config = workdir / "bench.yaml"
    config.write_text(
        f"model:\n  onnx: {model}\nengine:\n  max_batch: {batch}\nsources:\n{sources}"
        f"publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 0\n  level: WARNING\n"
        # Metrics on, as a service runs, on a port of its own (another daemon may hold the default).
        "metrics:\n  listen: 127.0.0.1:0\n"
        f"tracking:\n  enabled: {'true' if tracking else 'false'}\n"
    )
    with Subscriber(endpoint, events=True) as sub:
        proc = subprocess.Popen([sys.executable, "-m", "streamer", "run", str(config)])
        times: list[float] = []
        ended = 0
        try:
            while ended < streams:
                msg = sub.recv(timeout=120)
                if msg.type == "det":  # type: ignore[union-attr]
                    times.append(time.perf_counter())
                elif msg.event in ("eos", "error"):  # type: ignore[union-attr]
                    ended += 1
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    if len(times) != streams * frames:
        print(f"warning: received {len(times)} detection messages, expected {streams * frames}")
    return (len(times) - 1) / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="yolov5s-coco,yolov7-coco")
    parser.add_argument("--streams", type=int, default=2)
    parser.add_argument("--frames", type=int, default=0, help="frames per stream (default: per model)")
    parser.add_argument("--batch", type=int, default=0, help="daemon max_batch (default: --streams)")
    parser.add_argument("--tracking", choices=("off", "on", "both"), default="off")
    args = parser.parse_args()
    batch = args.batch or args.streams
    tracked: list[tuple[str, float, float]] = []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in args.models.split(","):
            model = SHARED / "models" / f"{name}.onnx"
            frames = args.frames or (60 if "v5" in name else 16)
            clip = make_clip(workdir / f"clip{frames}.mp4", frames, (1280, 720))
            # The machine's speed drifts (shared cores): measure the ceiling before and after the
            # daemon and keep the higher, which makes the daemon/ceiling ratio conservative.
            ceil = ceiling(model, batch, seconds=10)
            ceil1 = ceiling(model, 1, seconds=10) if batch != 1 else ceil
            slow = naive(model, clip)
            if args.tracking == "both":
                runs = {False: [], True: []}
                for on in (False, True, False, True):
                    runs[on].append(daemon(model, clip, args.streams, frames, batch, workdir, on))
                    print(f"{name}: daemon, tracking {'on' if on else 'off'}: {runs[on][-1]:.2f} frames/s")
                off_mean, on_mean = np.mean(runs[False]), np.mean(runs[True])
                tracked.append((name, float(off_mean), float(on_mean)))
                fast = float(off_mean)
            else:
                fast = daemon(model, clip, args.streams, frames, batch, workdir, args.tracking == "on")
            ceil = max(ceil, ceiling(model, batch, seconds=10))
            rows.append((name, ceil, ceil1, slow, fast))
            print(
                f"{name}: ceiling {ceil:.2f} (batch {batch}), {ceil1:.2f} (batch 1), naive {slow:.2f}, "
                f"daemon {fast:.2f} frames/s",
                flush=True,
            )
    print(
        f"\nCPU: {os.cpu_count()} cores; {args.streams} streams of 1280x720 H.264; daemon max_batch {batch}"
    )
    print(
        f"| model | ORT ceiling, batch {batch} | ORT ceiling, batch 1 | naive loop | daemon "
        "| daemon / ceiling |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, ceil, ceil1, slow, fast in rows:
        print(f"| {name} | {ceil:.2f} | {ceil1:.2f} | {slow:.2f} | {fast:.2f} | {fast / ceil:.2f} |")
    if tracked:
        print("\n| model | daemon, tracking off | daemon, tracking on | on / off |")
        print("|---|---:|---:|---:|")
        for name, off, on in tracked:
            print(f"| {name} | {off:.2f} | {on:.2f} | {on / off:.3f} |")


if __name__ == "__main__":
    main()
