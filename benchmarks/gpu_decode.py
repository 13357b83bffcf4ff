"""NVDEC throughput on the GPU host: yolostream's GPU path vs a bare PyNvVideoCodec loop, side by side.

    python benchmarks/gpu_decode.py --streams 1 4 8 16 --seconds 10

For each stream count N, in one run:

- bare: N processes, each a bare PyNvVideoCodec loop (its own demuxer and decoder, frames left on the
  GPU, nothing else) over the clip, looping;
- yolostream: N source processes as the daemon runs them — `NvdecSource` (PyAV demuxer → NVDEC),
  each frame copied into the stream's CUDA-IPC ring (`workers.ring_writer.hand_over`) and announced on
  the notification socket — plus one consumer process in the inference worker's role: it maps every
  ring once, makes its stream wait on each slot's event, runs the letterbox kernel into a 640×640 batch
  buffer and releases the slot once the kernel has run (`PendingReleases`).

Decoders are created before the clock starts (as in the ceiling measured in ../shared/device/README.md);
every process then runs for `--seconds`. Printed: frames/s in total for both, their ratio (target ≥ 0.95),
and GPU memory per stream (nvidia-smi's per-process figure when available, else the drop of
``cudaMemGetInfo``'s free memory divided by N).

The clip: 1080p H.264 at about 6.4 Mb/s, 30 fps, 10 s, B-frames, synthetic moving content, encoded with
the libx264 in PyAV's wheel into ``.mp4``. Both paths read the same file. `--clip FILE` uses a given one.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTH, HEIGHT, FPS = 1920, 1080, 30


# -- the clip ------------------------------------------------------------------------------------------


def _nv12_frame(i: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    y = (128 + 90 * np.sin((xx + 7 * i) / 41.0) * np.cos((yy - 3 * i) / 37.0)).astype(np.int16)
    y += rng.integers(-12, 12, y.shape, dtype=np.int16)
    uv = np.full((HEIGHT // 2, WIDTH), 128, np.int16)
    uv[:, 0::2] += (40 * np.sin((xx[::2, ::2] + 5 * i) / 90.0)).astype(np.int16)
    uv[:, 1::2] += (40 * np.cos((yy[::2, ::2] + 2 * i) / 70.0)).astype(np.int16)
    return np.clip(np.concatenate([y, uv]), 16, 240).astype(np.uint8)


def make_clip(folder: Path, seconds: int = 10, bitrate: int = 6_400_000) -> Path:
    """A 1080p H.264 clip (x264 in PyAV's wheel, B-frames on, as cameras and files have them) in .mp4."""
    import av

    mp4 = folder / "clip1080.mp4"
    rng = np.random.default_rng(0)
    base = [_nv12_frame(i, rng) for i in range(FPS)]  # one second of content, shifted as it loops
    with av.open(str(mp4), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = bitrate
        stream.options = {"preset": "veryfast", "g": str(FPS)}
        for i in range(seconds * FPS):
            nv12 = np.roll(base[i % FPS], 8 * (i // FPS), axis=1)
            y, uv = nv12[:HEIGHT], nv12[HEIGHT:]
            planar = np.concatenate([y, uv[:, 0::2].reshape(-1, WIDTH), uv[:, 1::2].reshape(-1, WIDTH)])
            frame = av.VideoFrame.from_ndarray(planar, format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return mp4


# -- the bare loop ---------------------------------------------------------------------------------------


def bare_process(clip: str, ready: Any, go: Any, seconds: float, out: Any) -> None:
    import PyNvVideoCodec as nvc

    demuxer = nvc.CreateDemuxer(clip)
    decoder = nvc.CreateDecoder(gpuid=0, codec=demuxer.GetNvCodecId(), usedevicememory=True)
    ready.release()
    go.wait()
    end = time.perf_counter() + seconds
    frames = 0
    while time.perf_counter() < end:
        for packet in demuxer:
            frames += len(decoder.Decode(packet))
            if time.perf_counter() >= end:
                break
        else:
            demuxer = nvc.CreateDemuxer(clip)  # loop the file
    out.put(("bare", os.getpid(), frames))


# -- yolostream's path ------------------------------------------------------------------------------------


def source_process(*args: Any) -> None:
    from streamer.workers.common import profiled

    profiled(f"bench-source-{args[0]}", _source_loop, *args)


def _source_loop(index: int, clip: str, run_dir: str, endpoint: str, ready: Any, go: Any, stop: Any) -> None:
    from streamer.sources.nvdec import NvdecSource
    from streamer.transport.notify import NotifySender
    from streamer.workers.ring_writer import RingWriter, hand_over

    sid = f"s{index}"
    sender = NotifySender(endpoint)
    source = NvdecSource(sid, clip, loop=True)
    source.open()  # the decoder exists before the clock starts
    writer = RingWriter(run_dir, sid, slots=4)
    frames = source.frames()
    first = next(frames)
    writer.device_ring().ring_for(first.width, first.height)
    ready.release()
    go.wait()
    try:
        hand_over(sid, first, writer, sender, False, stop)
        for frame in frames:
            if stop.is_set():
                break
            hand_over(sid, frame, writer, sender, False, stop)
    finally:
        source.close()
        writer.close()
        sender.close()


def consumer_process(*args: Any) -> None:
    from streamer.workers.common import profiled

    profiled("bench-consumer", _consumer_loop, *args)


def _consumer_loop(endpoint: str, ready: Any, go: Any, seconds: float, out: Any) -> None:
    from streamer.cuda.runtime import check, load_cudart
    from streamer.messages import FrameReady, RingExport
    from streamer.preprocess.cuda_kernel import LetterboxKernel
    from streamer.preprocess.letterbox import letterbox_geometry
    from streamer.preprocess.nv12 import YuvCoefficients
    from streamer.transport.cuda_ring import CudaRingReader, PendingReleases
    from streamer.transport.notify import NotifyReceiver

    cudart = load_cudart()
    receiver = NotifyReceiver(endpoint)
    kernel = LetterboxKernel(640, 640, swap_rb=False)
    batch = 16
    buffer = int(check(cudart.cudaMalloc(batch * kernel.item_bytes), "cudaMalloc"))
    stream = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "stream")
    readers: dict[str, CudaRingReader] = {}
    pending = PendingReleases(lambda ring, slot, seq: readers[ring].release(slot, seq))
    coefficients: dict[tuple[int, int], YuvCoefficients] = {}
    ready.release()
    go.wait()
    start = time.perf_counter()
    end = start + seconds
    frames = 0
    while (now := time.perf_counter()) < end + 1.0:
        # while kernels are pending, poll their events often: a writer whose ring is full waits for them
        msg = receiver.recv(0.0 if pending else 0.05)
        if msg is None:
            pending.poll()
            continue
        if isinstance(msg, RingExport):
            readers[msg.ring] = CudaRingReader(msg)
            continue
        if not isinstance(msg, FrameReady):
            continue
        reader = readers[msg.ring]
        reader.check(msg.slot, msg.seq)
        reader.wait(msg.slot, stream)
        y, uv, pitch = reader.planes(msg.slot)
        key = (msg.colorspace, msg.color_range)
        c = coefficients.setdefault(key, YuvCoefficients.for_frame(*key))
        g = letterbox_geometry(msg.width, msg.height, 640, 640)
        kernel.launch(y, uv, pitch, g, c, buffer, frames % batch, stream)
        # released once this frame's kernel has run (an event per frame: a file source waits for a
        # free slot, so holding slots back for a bigger group would stall it)
        pending.record(stream, [(msg.ring, msg.slot, msg.seq)])
        if now < end:
            frames += 1
        pending.poll()
    check(cudart.cudaStreamSynchronize(stream), "sync")
    pending.close()
    out.put(("yolostream", os.getpid(), frames))
    kernel.close()
    for reader in readers.values():
        reader.close()
    receiver.close()


# -- the run ---------------------------------------------------------------------------------------------


def gpu_memory_mib(pids: list[int]) -> float | None:
    """Memory the given processes hold on the GPU, per nvidia-smi (None when it cannot say)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        lines = subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return None
    used = {int(p): float(m) for p, m in (line.split(",") for line in lines if line.strip())}
    found = [used[p] for p in pids if p in used]
    return sum(found) if found else None


def free_mib() -> float:
    from streamer.cuda.runtime import check, load_cudart

    free, _ = check(load_cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return free / 2**20


def run(kind: str, n: int, clip: str, seconds: float, run_dir: str) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    ready, go, stop, out = ctx.Semaphore(0), ctx.Event(), ctx.Event(), ctx.Queue()
    before = free_mib()
    procs = []
    if kind == "bare":
        procs = [ctx.Process(target=bare_process, args=(clip, ready, go, seconds, out)) for _ in range(n)]
        waiters = n
    else:
        endpoint = f"ipc://{run_dir}/notify-{n}.sock"
        procs = [ctx.Process(target=consumer_process, args=(endpoint, ready, go, seconds, out))]
        procs += [
            ctx.Process(target=source_process, args=(i, clip, run_dir, endpoint, ready, go, stop))
            for i in range(n)
        ]
        waiters = n + 1
    for p in procs:
        p.start()
    for _ in range(waiters):
        if not ready.acquire(timeout=120):
            raise TimeoutError(f"{kind}: a process did not get ready")
    sources = [p.pid for p in procs] if kind == "bare" else [p.pid for p in procs[1:]]
    memory = gpu_memory_mib([pid for pid in sources if pid])
    if memory is None:
        memory = max(0.0, before - free_mib())
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in range(n if kind == "bare" else 1)]
    stop.set()
    for p in procs:
        p.join(30)
        if p.is_alive():
            p.kill()
    frames = sum(r[2] for r in results)
    return frames / seconds, memory / n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clip", type=Path, help="a 1080p H.264 file (default: made here with NVENC)")
    args = parser.parse_args()
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="gpu_decode.", dir=shm) as tmp:
        clip = args.clip or make_clip(Path(tmp))
        from streamer.cuda.runtime import load_cudart

        name = load_cudart().cudaGetDeviceProperties(0)[1].name
        name = name.decode(errors="replace").rstrip("\0") if isinstance(name, bytes) else name
        size_mb = Path(clip).stat().st_size / 1e6
        print(f"GPU: {name}; clip: {clip} ({size_mb:.1f} MB), {args.seconds:g} s per run")
        header = ("streams", "bare fps", "yolostream fps", "ratio", "bare MiB/stream", "ys MiB/stream")
        print(" | ".join(f"{h:>{max(7, len(h))}}" for h in header))
        for n in args.streams:
            bare, bare_mem = run("bare", n, str(clip), args.seconds, tmp)
            ours, ours_mem = run("yolostream", n, str(clip), args.seconds, tmp)
            row = (
                f"{n}",
                f"{bare:.0f}",
                f"{ours:.0f}",
                f"{ours / bare:.2f}",
                f"{bare_mem:.0f}",
                f"{ours_mem:.0f}",
            )
            print(" | ".join(f"{v:>{max(7, len(h))}}" for v, h in zip(row, header, strict=True)), flush=True)


if __name__ == "__main__":
    main()
