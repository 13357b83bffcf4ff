"""How much of the GPU the decoders take from the engine: the engine alone, with and without decoding (#11).

    python benchmarks/gpu_contention.py --streams 48 --per-process 8 48 1 0 --seconds 8 --precision fp16

The unpaced daemon reaches ~0.77 of the engine alone, with the inference loop mostly idle and each batch
taking longer on the GPU than it does alone. This separates the causes without the daemon:

- ``engine``: the daemon's torch engine (same graph, batch, precision, compiled) alone on one CUDA stream,
  inputs on the GPU (`gpu_executor.ceiling`, as `gpu_pipeline.py` and `gpu_live.py` print it);
- ``executor``: the daemon's `CudaExecutor` with its two in-flight slots and the GPU candidate filter,
  every input already on the GPU (what the inference worker does minus letterbox, NMS and publishing);

each first with the GPU otherwise idle, then while N 1080p30 H.264 streams are decoded on NVDEC as the
daemon's sources do it (`NvdecSource`: PyAV demuxer → NVDEC; each picture copied into a device buffer with
two ``cudaMemcpy2DAsync`` and an event recorded, as `CudaRingWriter.write` does), paced at the clip's
30 fps (cameras), K streams per decoder process (threads; K = 0: the threads run in the engine's own
process, sharing its CUDA context). ``--no-copy`` decodes only. Printed last: img/s of both, the share
of the idle figure, and the frames/s the decoders reached.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_decode import FPS, make_clip


def decode_streams(clip: str, streams: int, copy: bool, stop: Any, counter: Any, ready: Any) -> None:
    """`streams` threads, each an `NvdecSource` paced at FPS; frames decoded are added to `counter`."""
    from streamer.cuda.runtime import check, load_cudart
    from streamer.sources.nvdec import NvdecSource
    from streamer.transport.cuda_ring import nv12_layout

    cudart = load_cudart()
    lock = threading.Lock()
    opened = threading.Barrier(streams + 1)

    def one(i: int) -> None:
        source = NvdecSource(f"s{i}", clip, loop=True)
        source.open()
        width, height = source.info.width, source.info.height  # type: ignore[union-attr]
        pitch, nbytes = nv12_layout(width, height)
        dst = int(check(cudart.cudaMalloc(nbytes), "cudaMalloc"))
        event = check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming), "event")
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        opened.wait()
        start, n = time.perf_counter() + (i % FPS) / FPS / 2, 0  # streams' frames spread over an interval
        for frame in source.frames():
            if stop.is_set():
                break
            if copy:
                planes = ((dst, frame.y_ptr, height), (dst + pitch * height, frame.uv_ptr, height // 2))
                for d, s, rows in planes:
                    src_pitch, stream = frame.pitch, frame.stream
                    copied = cudart.cudaMemcpy2DAsync(d, pitch, s, src_pitch, width, rows, kind, stream)
                    check(copied, "copy")
                check(cudart.cudaEventRecord(event, frame.stream), "record")
                check(cudart.cudaEventSynchronize(event), "sync")  # the picture's buffer goes back to NVDEC
            n += 1  # noqa: SIM113 (frames skipped by `stop` are not counted)
            with lock:
                counter.value += 1
            if (wait := start + n / FPS - time.perf_counter()) > 0:
                time.sleep(wait)
        source.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    opened.wait()
    ready.release()
    for t in threads:
        t.join()


class Bench:
    """The engine on its own stream and the daemon's executor, built (CUDA graphs captured) once, on the idle
    GPU: a capture while decoder threads of this process run is invalidated by their work (K = 0 crashed)."""

    def __init__(self, engine: Any, batch: int) -> None:
        from streamer.engine.cuda_executor import CudaExecutor, DeviceArray, check, cudart

        spec, self.engine, self.batch = engine.spec, engine, batch
        self.x = DeviceArray((batch, 3, spec.height, spec.width), np.float32)
        self.y = DeviceArray((batch, spec.boxes, spec.outputs_per_box), np.float32)
        self.stream = int(check(cudart.cudaStreamCreate(), "stream"))
        self.ctx = engine.new_context()
        self._run(3)  # binds the context: its graphs are captured here
        self.executor = CudaExecutor(engine, slots=2, conf=0.25)

    def _run(self, batches: int) -> float:
        from streamer.engine.cuda_executor import check, cudart

        start = time.perf_counter()
        for _ in range(batches):
            self.engine.enqueue(self.ctx, self.batch, self.x.ptr, {"output": self.y.ptr}, self.stream)
        check(cudart.cudaStreamSynchronize(self.stream), "sync")
        return self.batch * batches / (time.perf_counter() - start)

    def measure(self, seconds: float) -> tuple[float, float]:
        """(engine alone img/s, executor img/s), each over about `seconds`."""
        rate = self._run(20)
        alone = self._run(max(20, int(rate * seconds / self.batch)))
        ex, batch = self.executor, self.batch
        done, start, now = -4, 0.0, 0.0  # the first four batches warm up
        while done < 0 or now - start < seconds:
            while (slot := ex.free_slot()) is not None:
                ex.submit(slot, list(range(batch)), on_device=range(batch))
            ex.done(timeout=None)
            done += 1
            now = time.perf_counter()
            if done == 0:
                start = now
        executor = done * batch / (now - start)
        while ex.done(timeout=None) is not None:
            pass
        return alone, executor

    def close(self) -> None:
        self.executor.close()
        self.x.close()
        self.y.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, default=48)
    parser.add_argument("--per-process", type=int, nargs="+", default=[8, 48, 1, 0])
    parser.add_argument("--no-copy", action="store_true", help="also decode only (first K)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()

    from gpu_executor import random_yolov7

    from streamer.engine.base import EngineOptions
    from streamer.engine.torch_device import TorchDeviceEngine

    work = Path(tempfile.mkdtemp(prefix="contention-"))
    model = random_yolov7(work / "yolov7-random.onnx")
    clip = str(make_clip(work))
    engine = TorchDeviceEngine(
        model, EngineOptions(device="cuda", max_batch=args.batch, precision=args.precision)
    )
    rows: list[tuple[str, float, float, float]] = []
    bench = Bench(engine, args.batch)
    alone, executor = bench.measure(args.seconds)
    rows.append(("GPU otherwise idle", alone, executor, 0.0))
    print(f"idle: engine {alone:.0f} img/s, executor {executor:.0f}", flush=True)
    variants = [(k, True) for k in args.per_process]
    if args.no_copy:
        variants.append((args.per_process[0], False))
    ctx = mp.get_context("spawn")
    for per_process, copy in variants:
        stop, counter, ready = ctx.Event(), ctx.Value("q", 0), ctx.Semaphore(0)
        groups = [min(per_process or args.streams, args.streams - i)
                  for i in range(0, args.streams, per_process or args.streams)]  # fmt: skip
        if per_process == 0:  # threads of this process: one CUDA context for decoding and the engine
            workers: list[Any] = [threading.Thread(
                target=decode_streams, args=(clip, args.streams, copy, stop, counter, ready), daemon=True
            )]  # fmt: skip
        else:
            workers = [ctx.Process(target=decode_streams, args=(clip, n, copy, stop, counter, ready))
                       for n in groups]  # fmt: skip
        for w in workers:
            w.start()
        for _ in workers:
            if not ready.acquire(timeout=120):
                sys.exit("the decoders did not start in 120 s")
        time.sleep(2)  # decoders up to speed
        c0, t0 = counter.value, time.perf_counter()
        e_alone, e_exec = bench.measure(args.seconds)
        decoded = (counter.value - c0) / (time.perf_counter() - t0)
        stop.set()
        for w in workers:
            w.join(15)
            if isinstance(w, mp.process.BaseProcess) and w.is_alive():
                w.kill()
        where = f"{per_process} per process, {len(groups)} processes"
        if per_process == 0:
            where = "in the engine's process"
        label = f"{args.streams} streams, {where}{'' if copy else ', decode only'}"
        rows.append((label, e_alone, e_exec, decoded))
        print(f"{label}: engine {e_alone:.0f}, executor {e_exec:.0f}, decoded {decoded:.0f} fps", flush=True)
    bench.close()
    engine.close()

    print(f"\nYOLOv7-640 random weights, torch {args.precision} compiled, batch {args.batch}; "
          f"1080p30 H.264 on NVDEC, paced at {FPS} fps")  # fmt: skip
    print(f"{'decoding beside the engine':<52}| engine img/s | share | executor img/s | share | decoded fps")
    for label, e, x, d in rows:
        print(f"{label:<52}| {e:12.0f} | {e / alone:5.2f} | {x:14.0f} | {x / alone:5.2f} | {d:11.0f}")


if __name__ == "__main__":
    main()
