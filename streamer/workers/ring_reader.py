"""How the inference worker reads announced frames into a batch: one protocol, two sides.

A `FrameReader` turns a `FrameReady` into one item of an executor slot's input batch and gives the frame's
ring slot back to its source, never before the pixels have been read:

- `HostFrames` (here): RGB frames in shared-memory rings (the CPU decoder), letterboxed on the CPU
  into the slot's host input; the ring slot is released at once;
- `streamer.workers.cuda_ring_reader.DeviceFrames`: NV12 frames in CUDA rings (NVDEC), letterboxed by the
  CUDA kernel straight into the slot's device input, one launch per batch; ring slots are released
  once the GPU has passed that kernel.

`fill` raises `StaleSlotError` when the frame is gone (its slot is released); `take_batch` closes the
slot's batch and says which items were written on the device; `poll` hands back slots whose reads have
completed; `stream_gone` closes a stream's rings once nothing of it is queued or in flight.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import numpy as np

from streamer.engine.executor import Executor
from streamer.messages import FrameReady
from streamer.preprocess import LetterboxGeometry, letterbox, to_input_tensor
from streamer.transport.ring import FrameRing, StaleSlotError

if TYPE_CHECKING:
    from streamer.workers.pictures import Pictures

log = logging.getLogger(__name__)


class FrameReader(Protocol):
    def fill(self, slot: int, index: int, note: FrameReady, geometry: LetterboxGeometry) -> None: ...

    def release(self, note: FrameReady) -> None:
        """Give back the ring slot of a frame that will not be read (dropped)."""
        ...

    def take_batch(self, slot: int) -> list[int]:
        """Close executor slot `slot`'s batch; the item indices already written on the device."""
        ...

    def poll(self) -> int:
        """Release the ring slots whose reads have completed; how many."""
        ...

    def stream_gone(self, stream: str) -> None: ...

    def close(self) -> None: ...


class HostFrames:
    """Shared-memory rings of RGB frames, mapped on first use; letterboxed by NumPy/OpenCV."""

    def __init__(self, executor: Executor, swap_rb: bool, pictures: Pictures | None = None) -> None:
        self.executor = executor
        self.swap_rb = swap_rb
        self.pictures = pictures
        """Where a frame of a stream someone looks at is copied to now and then (its picture)."""
        spec = executor.spec
        self._canvas = np.empty((spec.height, spec.width, 3), np.uint8)
        self.rings: dict[str, FrameRing] = {}
        self._stream_of: dict[str, str] = {}  # ring path → stream id

    def _ring(self, note: FrameReady) -> FrameRing | None:
        ring = self.rings.get(note.ring)
        if ring is None:
            try:
                ring = self.rings[note.ring] = FrameRing.attach(note.ring)
            except (OSError, ValueError) as exc:
                log.error("stream %s: cannot map frame ring %s: %s", note.stream, note.ring, exc)
                return None
            self._stream_of[note.ring] = note.stream
        return ring

    def fill(self, slot: int, index: int, note: FrameReady, geometry: LetterboxGeometry) -> None:
        ring = self._ring(note)
        if ring is None:
            raise StaleSlotError(f"ring {note.ring} is gone")
        spec = self.executor.spec
        try:
            ring.check(note.slot, note.seq)
            image = ring.view(note.slot, (note.height, note.width, 3))
            letterbox(image, spec.width, spec.height, out=self._canvas)
            shot = image.copy() if self.pictures is not None and self.pictures.want(note) else None
            del image  # the ring must hold no view of its memory when it is closed
            to_input_tensor(self._canvas, swap_rb=self.swap_rb, out=self.executor.host_input(slot)[index])
            ring.check(note.slot, note.seq)  # the pixels were not overwritten while we read them
            if shot is not None and self.pictures is not None:
                self.pictures.keep(note, shot)
        finally:
            ring.release(note.slot, note.seq)

    def release(self, note: FrameReady) -> None:
        ring = self._ring(note)
        if ring is not None:
            ring.release(note.slot, note.seq)

    def take_batch(self, slot: int) -> list[int]:
        return []

    def poll(self) -> int:
        return 0

    def stream_gone(self, stream: str) -> None:
        for path in [p for p, s in self._stream_of.items() if s == stream]:
            del self._stream_of[path]
            ring = self.rings.pop(path, None)
            if ring is not None:
                ring.close()

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()
        self._stream_of.clear()
