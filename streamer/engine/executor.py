"""Keeps up to N batches in flight so that preprocessing and NMS overlap inference.

Each in-flight slot owns its input buffer, allocated once at the engine's largest batch and reused. The
CPU executor runs the engine in one background thread (ONNX Runtime releases the GIL while it runs), so
while batch k is inferred the caller preprocesses batch k+1 and post-processes batch k-1. Batches
complete in submission order. A completed batch writes a byte to a pipe, so the caller can wait for
"a batch finished or a notification arrived" in one poll.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamer.engine.base import Engine


@dataclass
class Batch:
    """A batch in flight: which slot's buffer holds it, and the caller's per-image records."""

    slot: int
    items: Sequence[Any]
    submitted: float = field(default_factory=time.monotonic)
    finished: float = 0.0

    @property
    def size(self) -> int:
        return len(self.items)


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


class Executor(InflightSlots):
    """The CPU executor: the engine runs in one background thread, batches queue behind each other."""

    def __init__(self, engine: Engine, slots: int = 2) -> None:
        super().__init__(slots)
        spec = engine.spec
        self.engine = engine
        self.buffers = [
            np.zeros((spec.max_batch, 3, spec.height, spec.width), np.float32) for _ in range(slots)
        ]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    def submit(self, slot: int, items: Sequence[Any]) -> Batch:
        """Run the engine on the first ``len(items)`` images of `slot`'s buffer."""
        self._take(slot)
        batch = Batch(slot, items)
        future = self._pool.submit(self._run, batch)
        future.add_done_callback(self._wake)
        self._inflight.append((batch, future))
        return batch

    def _run(self, batch: Batch) -> np.ndarray:
        out = self.engine.infer(self.buffers[batch.slot][: batch.size])
        batch.finished = time.monotonic()
        return out

    def done(self, timeout: float | None = 0.0) -> tuple[Batch, np.ndarray] | None:
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
        return batch, future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._close_pipe()
