"""The source worker's side of the CUDA frame ring: NVDEC frames into device slots, announced to inference.

`DeviceRing` owns the stream's `CudaRingWriter` (a new one, with a new control-block file, when the
picture size changes; the old one is freed once the reader has released all its slots), sends its
`RingExport` before the first frame and again whenever the reader may not know it (a replaced inference
worker, or an export that could not be queued). Frames go into it by the policy of both rings,
`streamer.workers.ring_writer.hand_over`. Imported only when a stream decodes with NVDEC.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from streamer.transport.cuda_ring import CudaRingWriter
from streamer.transport.notify import NotifySender
from streamer.workers.common import next_generation

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
            self._generation = next_generation()  # per process: see `ring_writer.RingWriter.ring_for`
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
