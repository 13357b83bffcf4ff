"""The double-buffered CUDA executor: copies, inference and the CPU's post-processing overlap.

Each in-flight slot (two by default) owns a CUDA stream, a pinned host staging buffer for the batch the
CPU prepares, the device input buffer, device output buffers, pinned host copies of the outputs, an
execution context of the engine and four timing events. A batch is enqueued on its slot's stream as

    host→device copy of the input ─► engine.enqueue ─► device→host copy of the outputs

without waiting for anything, so while the GPU runs batch k+1 the CPU post-processes batch k and
prepares k+2. A waiter thread blocks on each batch's last event in submission order and writes a byte to
a pipe, which the inference loop polls beside its notification socket: the same contract as the CPU
`streamer.engine.executor.Executor` (free_slot / buffers / submit / done / wake_fd).

Buffers are allocated once, at the engine's largest batch; nothing is allocated per batch. Outputs
returned by `done` are views of the slot's pinned buffers, valid until that slot is submitted again.
CUDA is reached through cuda-python (``cuda.bindings.runtime``), imported only here.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.engine.cuda import check, load_cudart
from streamer.engine.device import DeviceEngine, TensorSpec
from streamer.engine.executor import InflightSlots

cudart = load_cudart()
_DTYPES = {"float32": np.float32, "float16": np.float16, "int32": np.int32, "int64": np.int64}


class PinnedArray:
    """A numpy array in page-locked host memory (fast, asynchronous copies to and from the GPU)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.ptr = int(check(cudart.cudaHostAlloc(self.nbytes, cudart.cudaHostAllocDefault), "cudaHostAlloc"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array = np.frombuffer(raw, dtype=dtype).reshape(shape)

    def close(self) -> None:
        if self.ptr:
            del self.array
            check(cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class DeviceArray:
    """Device memory for `shape` × `dtype` (owned; freed by close)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.ptr = int(check(cudart.cudaMalloc(self.nbytes), "cudaMalloc"))

    def close(self) -> None:
        if self.ptr:
            check(cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


@dataclass
class GpuBatch:
    """A batch in flight on a slot, with its CPU-side timestamps (perf_counter seconds)."""

    slot: int
    items: Sequence[Any]
    submitted: float = field(default_factory=time.perf_counter)
    finished: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    @property
    def size(self) -> int:
        return len(self.items)


class _Slot:
    def __init__(self, engine: DeviceEngine, max_batch: int) -> None:
        spec_in: TensorSpec = engine.input
        in_dtype = _DTYPES[spec_in.dtype]
        self.stream = check(
            cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreate"
        )
        self.host_in = PinnedArray(spec_in.shape_for(max_batch), in_dtype)
        self.dev_in = DeviceArray(spec_in.shape_for(max_batch), in_dtype)
        self.dev_out = {o.name: DeviceArray(o.shape_for(max_batch), _DTYPES[o.dtype]) for o in engine.outputs}
        self.host_out = {
            o.name: PinnedArray(o.shape_for(max_batch), _DTYPES[o.dtype]) for o in engine.outputs
        }
        self.context = engine.new_context()
        # pre: input copy started / engine starts / engine done / outputs copied
        self.events = [check(cudart.cudaEventCreate(), "cudaEventCreate") for _ in range(4)]

    def close(self) -> None:
        for array in (self.host_in, *self.host_out.values()):
            array.close()
        for buffer in (self.dev_in, *self.dev_out.values()):
            buffer.close()
        for event in self.events:
            check(cudart.cudaEventDestroy(event), "cudaEventDestroy")
        check(cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")


class CudaExecutor(InflightSlots):
    """Up to `slots` batches in flight on their own CUDA streams (see the module docstring)."""

    def __init__(self, engine: DeviceEngine, slots: int = 2, device: int = 0) -> None:
        super().__init__(slots)
        check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self.engine = engine
        self.max_batch = engine.spec.max_batch
        self._slots = [_Slot(engine, self.max_batch) for _ in range(slots)]
        self.buffers = [s.host_in.array for s in self._slots]
        self._waits: queue.Queue[GpuBatch | None] = queue.Queue()
        self._waiter = threading.Thread(target=self._wait_loop, name="cuda-waiter", daemon=True)
        self._waiter.start()
        self.timeline: list[dict[str, float]] | None = None
        """When a list, `done` appends each batch's timeline (seconds on the perf_counter clock)."""
        self._clock_event = check(cudart.cudaEventCreate(), "cudaEventCreate")
        check(cudart.cudaEventRecord(self._clock_event, 0), "cudaEventRecord")
        check(cudart.cudaEventSynchronize(self._clock_event), "cudaEventSynchronize")
        self._clock_cpu = time.perf_counter()  # the CPU time of _clock_event, to put GPU events on it

    @property
    def input_dtype(self) -> str:
        """The engine input's dtype name (``float32`` or ``float16``)."""
        return self.engine.input.dtype

    def device_input(self, slot: int) -> tuple[int, Any]:
        """(device address of `slot`'s input batch, its CUDA stream): for writing inputs on the GPU.

        Work enqueued on that stream before `submit` (e.g. the letterbox kernel of frames decoded by
        NVDEC) runs before the slot's inference; pass those items' indices as `on_device`.
        """
        s = self._slots[slot]
        return s.dev_in.ptr, s.stream

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
        if not on_device:
            check(
                cudart.cudaMemcpyAsync(s.dev_in.ptr, s.host_in.ptr, item_bytes * n, to_device, stream),
                "copy to device",
            )
        else:
            for i in range(n):
                if i not in on_device:
                    offset = i * item_bytes
                    check(
                        cudart.cudaMemcpyAsync(
                            s.dev_in.ptr + offset, s.host_in.ptr + offset, item_bytes, to_device, stream
                        ),
                        "copy to device",
                    )
        check(cudart.cudaEventRecord(s.events[1], stream), "cudaEventRecord")
        self.engine.enqueue(s.context, n, s.dev_in.ptr, {k: v.ptr for k, v in s.dev_out.items()}, int(stream))
        check(cudart.cudaEventRecord(s.events[2], stream), "cudaEventRecord")
        for spec in self.engine.outputs:
            count = int(np.prod(spec.shape_for(n)))
            nbytes = count * np.dtype(_DTYPES[spec.dtype]).itemsize
            check(
                cudart.cudaMemcpyAsync(
                    s.host_out[spec.name].ptr,
                    s.dev_out[spec.name].ptr,
                    nbytes,
                    cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                    stream,
                ),
                "copy to host",
            )
        check(cudart.cudaEventRecord(s.events[3], stream), "cudaEventRecord")
        self._inflight.append(batch)
        self._waits.put(batch)
        return batch

    def _wait_loop(self) -> None:
        while (batch := self._waits.get()) is not None:
            try:
                check(cudart.cudaEventSynchronize(self._slots[batch.slot].events[3]), "cudaEventSynchronize")
            except BaseException as exc:  # handed to the caller by done()
                batch.error = exc
            batch.finished = time.perf_counter()
            batch.done.set()
            self._wake()

    def done(self, timeout: float | None = 0.0) -> tuple[GpuBatch, dict[str, np.ndarray]] | None:
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
        return batch, {spec.name: s.host_out[spec.name].array[:n] for spec in self.engine.outputs}

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
            "copy_in": gpu[0],
            "infer_start": gpu[1],
            "infer_end": gpu[2],
            "copy_out_end": gpu[3],
            "finished": batch.finished,
        }

    def close(self) -> None:
        self._waits.put(None)
        self._waiter.join(10)
        check(cudart.cudaDeviceSynchronize(), "cudaDeviceSynchronize")
        for s in self._slots:
            s.close()
        check(cudart.cudaEventDestroy(self._clock_event), "cudaEventDestroy")
        self._close_pipe()
