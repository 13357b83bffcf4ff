"""The double-buffered CUDA executor: copies, inference and the CPU's post-processing overlap.

Each in-flight slot (two by default) owns a CUDA stream, a pinned host staging buffer for frames the CPU
letterboxes, the device input buffer, device output buffers, pinned host copies of the outputs, an
execution context of the engine and four timing events. A batch is enqueued on its slot's stream as

    host→device copy of the CPU-side items ─► engine.enqueue ─► first NMS step ─► device→host copy

without the caller waiting for anything, so while the GPU runs batch k+1 the CPU post-processes batch k
and prepares k+2.

**The engine runs one batch at a time** (``concurrent=False``, the default): a slot's stream waits for the
previous batch's engine to finish before its own starts; copies, the filter and the letterbox kernels of
the other slots still overlap it. Run concurrently, two batches share the GPU and both take about twice as
long, so they finish close together and the GPU idles while the CPU refills both slots (measured on an
H200, 48 NVDEC streams unpaced: a batch was on the engine only 84 % of the time). One after the other, a
batch finishes every engine time and the CPU has a whole engine time to refill its slot.

For the ``grid`` layout the first NMS step — keep the rows above the confidence threshold — runs on the
GPU (`streamer.engine.candidates`) when the executor is given the threshold, and only those rows come
back; otherwise the whole output is copied.

Two threads of the executor's own keep the caller from ever blocking in CUDA:

- the **launcher** enqueues the engine and what follows it. Launching a large CUDA graph blocks the
  calling thread while an earlier one still runs (measured on an H200: replaying YOLOv7's graph at batch
  16 behind another took 13.7 ms of host time per launch eager, and up to 8 ms compiled, against 0.1-0.5
  ms with the GPU idle); on the inference loop's thread that serialised the CPU's work with the GPU's;
- the **waiter** blocks on each batch's last event in submission order and writes a byte to a pipe, which
  the inference loop polls beside its notification socket (`streamer.engine.executor.Executor` is the
  contract).

CUDA calls release the GIL while they wait (cuda-python, torch's graph replay, TensorRT's
``execute_async_v3``), so neither thread holds up the loop.

Buffers are allocated once, at the engine's largest batch; nothing is allocated per batch. Outputs
returned by `done` are views of the slot's pinned buffers, valid until that slot is submitted again.
CUDA is reached through cuda-python (``cuda.bindings.runtime``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.cuda.runtime import DeviceArray, PinnedArray, check, load_cudart
from streamer.engine.candidates import GridCandidates
from streamer.engine.device import DeviceEngine, OutputLayout
from streamer.engine.executor import Batch, InflightSlots, Outputs

__all__ = ["CudaExecutor", "DeviceArray", "PinnedArray", "check", "cudart"]

cudart = load_cudart()
_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64}


@dataclass
class GpuBatch(Batch):
    """A batch in flight on a slot; `done` is set by the waiter thread."""

    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    launched: float = 0.0
    """perf_counter time at which the launcher had enqueued the engine and the copies back."""


class _Slot:
    def __init__(self, engine: DeviceEngine, max_batch: int, conf: float | None, device: int) -> None:
        spec_in = engine.input
        in_dtype = _DTYPES[spec_in.dtype]
        self.stream = check(
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreate"
        )
        self.host_in = PinnedArray(spec_in.shape_for(max_batch), in_dtype)
        self.dev_in = DeviceArray(spec_in.shape_for(max_batch), in_dtype)
        self.dev_out = {o.name: DeviceArray(o.shape_for(max_batch), _DTYPES[o.dtype]) for o in engine.outputs}
        self.candidates: GridCandidates | None = None
        if conf is not None and engine.layout is OutputLayout.GRID and engine.outputs[0].dtype == "float32":
            _, boxes, width = engine.outputs[0].shape
            self.candidates = GridCandidates(boxes, width, max_batch, conf, device=device)
        # the whole outputs on the host: every layout but a filtered grid (and the filter's overflow path)
        self.host_out = (
            {}
            if self.candidates is not None
            else {o.name: PinnedArray(o.shape_for(max_batch), _DTYPES[o.dtype]) for o in engine.outputs}
        )
        self.context = engine.new_context()
        engine.bind(self.context, self.dev_in.ptr, {k: v.ptr for k, v in self.dev_out.items()})
        # input copy started (submit) / engine starts / engine done / outputs copied (launcher)
        self.events = [check(cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(4)]

    def close(self) -> None:
        arrays: list[PinnedArray | DeviceArray] = [self.host_in, *self.host_out.values(), self.dev_in]
        for array in [*arrays, *self.dev_out.values()]:
            array.close()
        if self.candidates is not None:
            self.candidates.close()
        for event in self.events:
            check(cudart.cudaEventDestroy(event), "cudaEventDestroy")
        check(cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")


class CudaExecutor(InflightSlots):
    """Up to `slots` batches in flight on their own CUDA streams (see the module docstring).

    `conf`: the confidence threshold of NMS's first step, run on the GPU for the grid layout (None: the
    whole output is copied to the host). `concurrent`: let the slots' engine runs overlap on the GPU
    instead of queueing them one after another.
    """

    on_gpu = True

    def __init__(
        self,
        engine: DeviceEngine,
        slots: int = 2,
        device: int = 0,
        *,
        conf: float | None = None,
        owns_engine: bool = False,
        concurrent: bool = False,
    ) -> None:
        super().__init__(slots)
        self._concurrent = concurrent
        self._last_engine: Any = None
        """The engine-done event of the batch launched last (launcher thread): the next one waits for it."""
        check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self._device = device
        self.engine = engine
        self._owns_engine = owns_engine
        self.spec = engine.spec
        self.layout = engine.layout
        self.output_specs = engine.outputs
        self.input_dtype = engine.input.dtype
        self.max_batch = engine.spec.max_batch
        self._slots = [_Slot(engine, self.max_batch, conf, device) for _ in range(slots)]
        self.gpu_filter = self._slots[0].candidates is not None
        self._launches: queue.Queue[GpuBatch | None] = queue.Queue()
        self._waits: queue.Queue[GpuBatch | None] = queue.Queue()
        self._launcher = threading.Thread(target=self._launch_loop, name="cuda-launcher", daemon=True)
        self._waiter = threading.Thread(target=self._wait_loop, name="cuda-waiter", daemon=True)
        self._launcher.start()
        self._waiter.start()
        self.timeline: list[dict[str, float]] | None = None
        """When a list, `done` appends each batch's timeline (seconds on the perf_counter clock)."""
        self._clock_event = check(cudart.cudaEventCreate(), "cudaEventCreate")
        check(cudart.cudaEventRecord(self._clock_event, 0), "cudaEventRecord")
        check(cudart.cudaEventSynchronize(self._clock_event), "cudaEventSynchronize")
        self._clock_cpu = time.perf_counter()  # the CPU time of _clock_event, to put GPU events on it

    @property
    def buffers(self) -> list[np.ndarray]:
        return [s.host_in.array for s in self._slots]

    def host_input(self, slot: int) -> np.ndarray:
        return self._slots[slot].host_in.array

    def device_input(self, slot: int) -> tuple[int, int]:
        """(device address of `slot`'s input batch, its CUDA stream): for writing inputs on the GPU.

        Work enqueued on that stream before `submit` (e.g. the letterbox kernel of frames decoded by
        NVDEC) runs before the slot's inference; pass those items' indices as `on_device`.
        """
        s = self._slots[slot]
        return s.dev_in.ptr, int(s.stream)

    def submit(self, slot: int, items: Sequence[Any], on_device: Collection[int] = ()) -> GpuBatch:
        """Enqueue copy-in, inference and copy-out of the first ``len(items)`` images of `slot`.

        Items whose index is in `on_device` are already in the device input buffer (written on the
        slot's stream): only the others are copied from the pinned host buffer.
        """
        self._take(slot)
        s, n = self._slots[slot], len(items)
        batch = GpuBatch(slot, items)
        stream = s.stream
        item_bytes = s.host_in.nbytes // self.max_batch
        check(cudart.cudaEventRecord(s.events[0], stream), "cudaEventRecord")
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        for start, stop in _runs(n, on_device):  # contiguous runs of CPU-side items: one copy each
            check(
                cudart.cudaMemcpyAsync(
                    s.dev_in.ptr + start * item_bytes, s.host_in.ptr + start * item_bytes,
                    (stop - start) * item_bytes, to_device, stream,
                ),
                "copy to device",
            )  # fmt: skip
        self._inflight.append(batch)
        self._launches.put(batch)
        return batch

    def _launch_loop(self) -> None:
        check(cudart.cudaSetDevice(self._device), "cudaSetDevice")  # (the current device is per thread)
        while (batch := self._launches.get()) is not None:
            try:
                self._launch(batch)
            except BaseException as exc:  # handed to the caller by done(); the waiter does not wait for it
                batch.error = exc
            batch.launched = time.perf_counter()
            self._waits.put(batch)

    def _launch(self, batch: GpuBatch) -> None:
        """The engine, the filter or the output copies, and the batch's last event (launcher thread)."""
        s, n = self._slots[batch.slot], batch.size
        stream = s.stream
        if self._last_engine is not None and not self._concurrent:
            check(cudart.cudaStreamWaitEvent(stream, self._last_engine, 0), "cudaStreamWaitEvent")
        check(cudart.cudaEventRecord(s.events[1], stream), "cudaEventRecord")  # when the engine starts
        self.engine.enqueue(s.context, n, s.dev_in.ptr, {k: v.ptr for k, v in s.dev_out.items()}, int(stream))
        check(cudart.cudaEventRecord(s.events[2], stream), "cudaEventRecord")
        self._last_engine = s.events[2]
        if s.candidates is not None:
            s.candidates.enqueue(s.dev_out[self.engine.outputs[0].name].ptr, n, stream)
        else:
            for spec in self.engine.outputs:
                count = int(np.prod(spec.shape_for(n)))
                nbytes = count * np.dtype(_DTYPES[spec.dtype]).itemsize
                check(
                    cudart.cudaMemcpyAsync(
                        s.host_out[spec.name].ptr, s.dev_out[spec.name].ptr, nbytes,
                        cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream,
                    ),
                    "copy to host",
                )  # fmt: skip
        check(cudart.cudaEventRecord(s.events[3], stream), "cudaEventRecord")

    def _wait_loop(self) -> None:
        while (batch := self._waits.get()) is not None:
            try:
                if batch.error is None:
                    check(
                        cudart.cudaEventSynchronize(self._slots[batch.slot].events[3]), "cudaEventSynchronize"
                    )
            except BaseException as exc:  # handed to the caller by done()
                batch.error = exc
            batch.finished = time.perf_counter()
            batch.done.set()
            self._wake()

    def done(self, timeout: float | None = 0.0) -> tuple[GpuBatch, Outputs] | None:
        """The oldest batch and views of its outputs once finished (waiting up to `timeout`), else None."""
        if not self._inflight:
            return None
        batch = self._inflight[0]
        if not batch.done.wait(timeout):
            return None
        self._inflight.popleft()
        self._free.append(batch.slot)
        if batch.error is not None:
            raise batch.error
        s, n = self._slots[batch.slot], batch.size
        if self.timeline is not None:
            self.timeline.append(self._times(batch))
        tensors = {name: array.array[:n] for name, array in s.host_out.items()}
        return batch, Outputs(self.layout, tensors, s.candidates)

    def _times(self, batch: GpuBatch) -> dict[str, float]:
        s = self._slots[batch.slot]
        gpu = [
            self._clock_cpu + check(cudart.cudaEventElapsedTime(self._clock_event, ev), "elapsed") / 1e3
            for ev in s.events
        ]
        return {
            "slot": batch.slot,
            "size": batch.size,
            "submitted": batch.submitted,
            "launched": batch.launched,
            "copy_in": gpu[0],
            "infer_start": gpu[1],
            "infer_end": gpu[2],
            "copy_out_end": gpu[3],
            "finished": batch.finished,
        }

    def close(self) -> None:
        self._launches.put(None)
        self._launcher.join(10)
        self._waits.put(None)
        self._waiter.join(10)
        check(cudart.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
        for s in self._slots:
            s.close()
        check(cudart.cudaEventDestroy(self._clock_event), "cudaEventDestroy")
        self._close_pipe()
        if self._owns_engine:
            self.engine.close()


def _runs(n: int, skip: Collection[int]) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of the indices below `n` that are not in `skip`."""
    runs: list[tuple[int, int]] = []
    start = None
    for i in range(n + 1):
        inside = i < n and i not in skip
        if inside and start is None:
            start = i
        elif not inside and start is not None:
            runs.append((start, i))
            start = None
    return runs
