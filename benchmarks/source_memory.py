"""Memory of the source workers per stream: a process per stream vs streams sharing processes (#18).

    python benchmarks/source_memory.py --streams 8 --per-process 1 4 8             # CPU machine
    python benchmarks/source_memory.py --streams 16 64 --per-process 1 8 --decoder nvdec --backend torch \\
        --hd                                                                        # GPU host

For each stream count N and each K of ``--per-process`` (``supervisor.nvdec_streams_per_process`` and
``cpu_streams_per_process`` both set to K), one ``yolostream run`` plays N copies of a clip as cameras
(``realtime: true``, ``loop: true``); once every stream has published and `--warmup` seconds have
passed, the daemon's own ``/metrics`` is read (as ``yolostream status`` reads it): the resident host
memory and the GPU memory (nvidia-smi's per-process figure) of every source worker process, summed and
divided by N. Also printed: the GPU memory the whole daemon holds (nvidia-smi before/after). The model is
a tiny oracle graph (inference cost is not the point); `--hd` plays a 1080p H.264 clip instead of 640×360.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.cli.status import fetch, parse
from streamer.output.client import Subscriber

SOURCE_WORKERS = ("source", "decoders")


def small_clip(folder: Path, seconds: int = 4, fps: int = 25) -> Path:
    import av
    import numpy as np

    path = folder / "clip360.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for i in range(seconds * fps):
            image = np.zeros((360, 640, 3), np.uint8)
            image[:, (i * 8) % 640 :][:, :40] = 255  # a moving bar: the picture changes
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def measure(
    model: Path, clip: Path, streams: int, per_process: int, args: argparse.Namespace, workdir: Path
) -> tuple[int, float, float | None, float | None]:
    """(source processes, source RSS MiB, source GPU MiB or None, daemon GPU MiB or None)."""
    from daemon_tools import gpu_used_mib, stop_daemon

    endpoint = f"ipc://{workdir}/pub-{streams}-{per_process}.sock"
    sources = "".join(
        f"  - id: s{i}\n    url: {clip}\n    decoder: {args.decoder}\n    loop: true\n    realtime: true\n"
        for i in range(streams)
    )
    device = "cuda" if args.backend == "torch" else "cpu"
    config = workdir / f"memory-{streams}-{per_process}.yaml"
    config.write_text(
        f"model:\n  onnx: {model}\nengine:\n  backend: {args.backend}\n  device: {device}\n"
        f"sources:\n{sources}publish:\n  endpoint: {endpoint}\n"
        f"supervisor:\n  nvdec_streams_per_process: {per_process}\n  cpu_streams_per_process: {per_process}\n"
        "metrics:\n  listen: 127.0.0.1:0\nlogging:\n  stats_interval_s: 0\n"
    )
    log = workdir / f"daemon-{streams}-{per_process}.log"
    before = gpu_used_mib()
    with Subscriber(endpoint) as sub, log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(config)], stdout=out, stderr=out
        )
        try:
            seen: set[str] = set()
            deadline = time.monotonic() + 600
            while len(seen) < streams:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the daemon stopped or stalled; its log:\n{log.read_text()[-3000:]}")
                msg = sub.recv(timeout=60)
                if msg.type == "det":
                    seen.add(msg.stream)
            end = time.monotonic() + args.warmup
            while time.monotonic() < end:
                sub.recv(timeout=60)
            found = re.search(r"metrics and health checks on (http://\S+) ", log.read_text())
            if found is None:
                raise SystemExit(f"no metrics endpoint in the log:\n{log.read_text()[-3000:]}")
            _, text = fetch(f"{found.group(1)}/metrics")
            daemon_gpu = gpu_used_mib()
        finally:
            stop_daemon(proc)
    rows = [w for w in parse(text).workers if w.worker in SOURCE_WORKERS]
    rss = sum(w.rss or 0.0 for w in rows) / 2**20
    gpu = (
        sum(w.gpu for w in rows if w.gpu is not None) / 2**20
        if any(w.gpu is not None for w in rows)
        else None
    )
    held = None if daemon_gpu is None or before is None else daemon_gpu - before
    return len(rows), rss, gpu, held


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[8])
    parser.add_argument("--per-process", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--decoder", choices=("cpu", "nvdec"), default="cpu")
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--hd", action="store_true", help="a 1080p H.264 clip (default: 640x360)")
    args = parser.parse_args()
    from tests.support.models import write_oracle_model

    with tempfile.TemporaryDirectory(prefix="source_memory.") as tmp:
        workdir = Path(tmp)
        model = write_oracle_model(workdir / "oracle.onnx")
        if args.hd:
            from gpu_decode import make_clip

            clip = make_clip(workdir, seconds=10)
        else:
            clip = small_clip(workdir)
        header = (
            "streams", "per process", "processes", "RSS MiB", "RSS/stream", "GPU MiB", "GPU/stream",
            "daemon GPU",
        )  # fmt: skip
        print(f"{'1080p' if args.hd else '640x360'} H.264, decoder {args.decoder}, engine {args.backend}")
        print(" | ".join(header), flush=True)
        for n in args.streams:  # a row as soon as it is measured: a call cut short keeps what it had
            for k in args.per_process:
                procs, rss, gpu, held = measure(model, clip, n, k, args, workdir)
                row = (
                    str(n), str(k), str(procs), f"{rss:.0f}", f"{rss / n:.0f}",
                    "-" if gpu is None else f"{gpu:.0f}", "-" if gpu is None else f"{gpu / n:.0f}",
                    "-" if held is None else f"{held:.0f}",
                )  # fmt: skip
                print(" | ".join(f"{v:>{len(h)}}" for v, h in zip(row, header, strict=True)), flush=True)


if __name__ == "__main__":
    main()
