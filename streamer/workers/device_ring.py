"""The source worker's side of the CUDA frame ring: NVDEC frames into device slots, announced to inference.

`DeviceRing` owns the stream's `CudaRingWriter` (a new one, with a new control-block file, when the
picture size changes; the old one is freed once the reader has released all its slots), sends its
`RingExport` before the first frame and again whenever the reader may not know it (a replaced inference
worker, or an export that could not be queued). `hand_over` copies one `DeviceFrame` into a free slot
on the decoder's stream and sends the `FrameReady` — with the same waiting and dropping rules as the
CPU ring (`streamer.workers.source._hand_over`). Imported only when a stream decodes with NVDEC.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from streamer.messages import FrameReady
from streamer.observability.metrics import DROP_NOTIFY_FULL, DROP_RING_FULL
from streamer.sources.base import DeviceFrame
from streamer.transport.cuda_ring import CudaRingWriter
from streamer.transport.notify import NotifySender
from streamer.workers.common import NO_PRIOR, Prior, next_generation, wait_for_slot

log = logging.getLogger(__name__)


class DeviceRing:
    """The stream's CUDA ring, its replacements, and whether the reader has been told about it."""

    def __init__(self, run_dir: str, stream_id: str, slots: int, device: int = 0) -> None:
        self._dir = Path(run_dir)
        self._stream = stream_id
        self._slots = slots
        self._device = device
        self._generation = 0
        self.ring: CudaRingWriter | None = None
        self._retired: list[CudaRingWriter] = []
        self._exported = False

    def ring_for(self, width: int, height: int) -> CudaRingWriter:
        self._free_retired()
        if self.ring is None or not self.ring.fits(width, height):
            if self.ring is not None:
                self._retired.append(self.ring)  # the reader may still hold some of its slots
            self._generation = next_generation()  # per process: see `source.RingWriter.ring_for`
            path = self._dir / f"{self._stream}.{os.getpid()}.{self._generation}.cring"
            self.ring = CudaRingWriter(path, self._slots, width, height, self._device)
            self._exported = False
            log.info(
                "stream %s: CUDA frame ring of %d NV12 slots for %dx%d (%.1f MiB of device memory)",
                self._stream, self._slots, width, height, self._slots * self.ring.slot_bytes / 2**20,
            )  # fmt: skip
        return self.ring

    def reader_replaced(self) -> int:
        """A new inference worker: take back the slots the dead one held, and export the ring again."""
        self._exported = False
        if self.ring is None:
            return 0
        held = self.ring.busy()
        for slot in range(self.ring.slots):
            self.ring.abandon(slot)
        return held

    def ensure_exported(self, sender: NotifySender) -> bool:
        if self._exported or self.ring is None:
            return self._exported
        self._exported = sender.send(self.ring.export(self._stream))
        return self._exported

    def _free_retired(self) -> None:
        for ring in list(self._retired):
            if ring.reader_done():  # the reader unmaps an old ring when the new one's export arrives
                ring.close(wait_s=0)
                self._retired.remove(ring)

    def close(self) -> None:
        for ring in [*self._retired, *([self.ring] if self.ring is not None else [])]:
            ring.close()
        self._retired, self.ring = [], None


def hand_over_device(
    stream: str,
    frame: DeviceFrame,
    rings: DeviceRing,
    sender: NotifySender,
    live: bool,
    stop: Any,
    reclaim: Any,
    prior: Prior = NO_PRIOR,
) -> str | None:
    """Copy `frame` into a free slot of the stream's CUDA ring and announce it (with `prior`); None, or
    why it was dropped (a ``DROP_*`` reason).

    `reclaim()` is the source worker's check for a replaced inference worker (it frees the slots the
    dead one held); a file source waits for a slot, a live one drops the frame.
    """
    ring = rings.ring_for(frame.width, frame.height)
    if not rings.ensure_exported(sender):
        return DROP_NOTIFY_FULL

    def reclaimed_and_exported() -> bool:
        reclaim()
        return rings.ensure_exported(sender)

    slot = wait_for_slot(ring.free_slot, live, stop, reclaimed_and_exported)
    if slot is None:
        return DROP_RING_FULL
    seq = ring.write(slot, frame.y_ptr, frame.uv_ptr, frame.pitch, stream=frame.stream)
    note = FrameReady(
        stream, str(ring.path), slot, seq, frame.index, frame.pts, frame.capture_time,
        frame.width, frame.height, live,
        layout="nv12", colorspace=frame.colorspace, color_range=frame.color_range,
        after=prior.after, ring_full=prior.ring_full, notify_full=prior.notify_full,
    )  # fmt: skip
    if not sender.send(note):
        ring.abandon(slot)
        return DROP_NOTIFY_FULL
    return None
