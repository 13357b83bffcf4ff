"""Keeps up to N batches in flight so that preprocessing and NMS overlap inference: one contract, two
executors.

`Executor` is what the inference worker drives, whichever engine runs: take a free slot, fill the slot's
input (on the host, `host_input`, or on the GPU, `device_input`), `submit`, and later collect the
finished batch with `done` in submission order, as `Outputs`. A finished batch writes a byte to a pipe
(`wake_fd`), so the caller can wait for "a batch finished or a notification arrived" in one poll.

- `CpuExecutor` (here): ONNX Runtime or torch on the CPU; the engine runs in one background thread
  (ONNX Runtime releases the GIL while it runs), so while batch k is inferred the caller preprocesses
  batch k+1 and post-processes batch k-1;
- `streamer.engine.cuda_executor.CudaExecutor`: TensorRT or torch on CUDA streams.

Each slot owns its input buffer, allocated once at the engine's largest batch and reused.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from streamer.engine.base import Engine, ModelSpec
from streamer.engine.device import OutputLayout, TensorSpec

if TYPE_CHECKING:
    from streamer.engine.candidates import GridCandidates


@dataclass
class Batch:
    """A batch in flight: which slot's buffer holds it, and the caller's per-image records."""

    slot: int
    items: Sequence[Any]
    submitted: float = field(default_factory=time.perf_counter)
    finished: float = 0.0
    """perf_counter time at which the executor saw the batch finish."""

    @property
    def size(self) -> int:
        return len(self.items)


class Outputs:
    """A finished batch's outputs, as post-processing reads them.

    `tensors` are the engine's outputs by name, batch first (views valid until the slot is submitted
    again). For the ``grid`` layout, `grid_rows(i)` gives the rows of image i that NMS must look at: the
    whole ``[N, 5 + nc]`` grid, or — where the executor filtered on the GPU (`streamer.engine.candidates`)
    — only the rows above the confidence threshold, in row order, which NMS turns into the same detections.
    """

    def __init__(
        self,
        layout: OutputLayout,
        tensors: Mapping[str, np.ndarray],
        candidates: GridCandidates | None = None,
    ) -> None:
        self.layout = layout
        self.tensors = tensors
        self._candidates = candidates

    def grid_rows(self, i: int) -> np.ndarray:
        if self._candidates is not None:
            return self._candidates.rows(i)
        return next(iter(self.tensors.values()))[i]


class Executor(Protocol):
    """The contract between the inference worker and whatever runs the engine."""

    spec: ModelSpec
    layout: OutputLayout
    output_specs: tuple[TensorSpec, ...]
    on_gpu: bool
    """Whether frames in GPU memory can be written straight into `device_input`."""
    input_dtype: str

    @property
    def wake_fd(self) -> int: ...

    @property
    def inflight(self) -> int: ...

    def free_slot(self) -> int | None: ...

    def clear_wake(self) -> None: ...

    def host_input(self, slot: int) -> np.ndarray:
        """`slot`'s host input buffer ``[max_batch, 3, H, W]``: frames letterboxed on the CPU go here."""
        ...

    def device_input(self, slot: int) -> tuple[int, int]:
        """(device address of `slot`'s input batch, its CUDA stream); only where `on_gpu`."""
        ...

    def submit(self, slot: int, items: Sequence[Any], on_device: Collection[int] = ()) -> Batch:
        """Run the first ``len(items)`` images of `slot`; items in `on_device` were written on the GPU."""
        ...

    def done(self, timeout: float | None = 0.0) -> tuple[Batch, Outputs] | None:
        """The oldest batch with its outputs once it has finished (waiting up to `timeout`), else None."""
        ...

    def close(self) -> None:
        """Stop and free the buffers; close the engine too when the executor owns it."""
        ...


class InflightSlots:
    """What every executor keeps: the free slots, the batches in flight (oldest first), a wake pipe.

    Slots are handed out in order and come back in order; a finished batch writes a byte to the pipe
    (`wake_fd`) so that the inference loop wakes for it in the same poll as for notifications.
    """

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"an executor needs at least one slot, got {slots}")
        self._free: deque[int] = deque(range(slots))
        self._inflight: deque[Any] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @property
    def wake_fd(self) -> int:
        """Readable when a batch has finished; poll it beside the notification socket."""
        return self._wake_r

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def free_slot(self) -> int | None:
        """A slot whose buffer may be filled for the next batch, or None if every slot is in flight."""
        return self._free[0] if self._free else None

    def _take(self, slot: int) -> None:
        if not self._free or self._free[0] != slot:
            raise RuntimeError(f"slot {slot} is not the free slot")
        self._free.popleft()

    def _wake(self, *_args: object) -> None:
        # A full pipe already says "something finished": never block the finishing thread on it.
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b".")

    def clear_wake(self) -> None:
        """Empty the wake pipe (call after a poll said it was readable, then collect with `done`)."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _close_pipe(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)


class CpuExecutor(InflightSlots):
    """The engine runs in one background thread; batches queue behind each other."""

    on_gpu = False
    layout = OutputLayout.GRID  # the synchronous engines give the grid layout

    def __init__(self, engine: Engine, slots: int = 2, *, owns_engine: bool = False) -> None:
        super().__init__(slots)
        spec = engine.spec
        self.engine = engine
        self._owns_engine = owns_engine
        self.spec = spec
        self.input_dtype = "float32"
        self.output_specs: tuple[TensorSpec, ...] = (
            TensorSpec("output", "float32", (-1, spec.boxes, spec.outputs_per_box)),
        )
        self.buffers = [
            np.zeros((spec.max_batch, 3, spec.height, spec.width), np.float32) for _ in range(slots)
        ]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    def host_input(self, slot: int) -> np.ndarray:
        return self.buffers[slot]

    def device_input(self, slot: int) -> tuple[int, int]:
        raise RuntimeError("the CPU executor has no device input")

    def submit(self, slot: int, items: Sequence[Any], on_device: Collection[int] = ()) -> Batch:
        """Run the engine on the first ``len(items)`` images of `slot`'s buffer."""
        if on_device:
            raise RuntimeError("the CPU executor takes no frames written on a device")
        self._take(slot)
        batch = Batch(slot, items)
        future = self._pool.submit(self._run, batch)
        future.add_done_callback(self._wake)
        self._inflight.append((batch, future))
        return batch

    def _run(self, batch: Batch) -> np.ndarray:
        rows = self.spec.max_batch if self.spec.fixed_batch else batch.size  # (rows past size: ignored)
        out = self.engine.infer(self.buffers[batch.slot][:rows])[: batch.size]
        batch.finished = time.perf_counter()
        return out

    def done(self, timeout: float | None = 0.0) -> tuple[Batch, Outputs] | None:
        """The oldest batch with its outputs once it has finished (waiting up to `timeout`), else None.

        Re-raises the engine's exception if the batch failed; its slot is freed either way.
        """
        if not self._inflight:
            return None
        batch, future = self._inflight[0]
        if not future.done() and not wait([future], timeout=timeout).done:
            return None
        self._inflight.popleft()
        self._free.append(batch.slot)
        result: Future[np.ndarray] = future
        return batch, Outputs(self.layout, {"output": result.result()})

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._close_pipe()
        if self._owns_engine:
            self.engine.close()
