"""A ring of frame slots in POSIX shared memory, written by one source worker, read by the inference worker.

The ring is a file on a tmpfs (``/dev/shm``) mapped by both processes. Its header holds, for every slot,
the sequence number of the frame last written into it (``written``, set only by the writer) and of the
frame last consumed from it (``released``, set only by the reader). A slot is free when the two are
equal. Each field has exactly one writer, and 8-byte aligned stores are atomic on the CPUs we run on, so
no lock is needed; the notification that announces a frame travels over a socket, whose system calls
order the pixel stores before the reader's loads.

A frame is announced as ``(ring path, slot, seq)``; the reader checks ``written[slot] == seq`` before
and after it copies the pixels out, so a slot recycled by a restarted writer is never mistaken for the
announced frame.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import numpy as np

_MAGIC = b"YSRING01"
_ALIGN = 4096


class StaleSlotError(RuntimeError):
    """The slot no longer holds the frame that was announced (the writer recycled or re-created it)."""


def _header_bytes(slots: int) -> int:
    # magic(8) + slots(8) + slot_bytes(8) + written[slots] + released[slots], rounded up to a page.
    raw = 24 + 16 * slots
    return (raw + _ALIGN - 1) // _ALIGN * _ALIGN


class FrameRing:
    """`slots` buffers of `slot_bytes` bytes each in a shared-memory file. Use `create` or `attach`."""

    def __init__(self, path: Path, fd: int, mm: mmap.mmap, slots: int, slot_bytes: int, owner: bool) -> None:
        self.path = path
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.owner = owner
        self._fd = fd
        self._mm: mmap.mmap | None = mm
        self._written = np.frombuffer(mm, dtype=np.int64, count=slots, offset=24)
        self._released = np.frombuffer(mm, dtype=np.int64, count=slots, offset=24 + 8 * slots)
        self._data_offset = _header_bytes(slots)
        self._next_seq = int(self._written.max(initial=0)) + 1
        self._cursor = 0

    @classmethod
    def create(cls, path: str | os.PathLike[str], slots: int, slot_bytes: int) -> FrameRing:
        """Create (or replace) the ring file at `path` and map it; the caller is its writer."""
        if slots < 1 or slot_bytes < 1:
            raise ValueError(f"a ring needs slots >= 1 and slot_bytes >= 1, got {slots}, {slot_bytes}")
        path = Path(path)
        slot_bytes = (slot_bytes + 63) // 64 * 64
        size = _header_bytes(slots) + slots * slot_bytes
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        mm[:24] = _MAGIC + slots.to_bytes(8, "little") + slot_bytes.to_bytes(8, "little")
        ring = cls(path, fd, mm, slots, slot_bytes, owner=True)
        # Start the sequence at the clock (ns), not at 1: a writer that re-creates the ring of a crashed
        # predecessor must not reuse the numbers of frames that were announced but not yet consumed.
        ring._next_seq = time.time_ns()
        return ring

    @classmethod
    def attach(cls, path: str | os.PathLike[str]) -> FrameRing:
        """Map an existing ring file as its reader. Raises FileNotFoundError if the file is gone."""
        path = Path(path)
        fd = os.open(path, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, 0)
        except BaseException:
            os.close(fd)
            raise
        if mm[:8] != _MAGIC:
            mm.close()
            os.close(fd)
            raise ValueError(f"{path} is not a frame ring")
        slots = int.from_bytes(mm[8:16], "little")
        slot_bytes = int.from_bytes(mm[16:24], "little")
        return cls(path, fd, mm, slots, slot_bytes, owner=False)

    # -- writer side --------------------------------------------------------------------------------

    def free_slot(self) -> int | None:
        """A slot that the reader has released (oldest first, round robin), or None if all are busy."""
        for i in range(self.slots):
            slot = (self._cursor + i) % self.slots
            if self._written[slot] == self._released[slot]:
                self._cursor = (slot + 1) % self.slots
                return slot
        return None

    def commit(self, slot: int) -> int:
        """Mark `slot` as holding a new frame; returns the frame's sequence number for the notification."""
        seq = self._next_seq
        self._next_seq += 1
        self._written[slot] = seq
        return seq

    def abandon(self, slot: int) -> None:
        """Take back a committed slot whose frame was never announced (marks it free again)."""
        self._written[slot] = self._released[slot]

    def busy(self) -> int:
        """How many slots hold frames the reader has not released yet."""
        return int(np.count_nonzero(self._written != self._released))

    # -- both sides --------------------------------------------------------------------------------

    def view(self, slot: int, shape: tuple[int, ...], dtype: np.dtype | type = np.uint8) -> np.ndarray:
        """A numpy view of `slot`'s memory with the given shape (no copy)."""
        if self._mm is None:
            raise ValueError(f"ring {self.path} is closed")
        count = int(np.prod(shape))
        if count * np.dtype(dtype).itemsize > self.slot_bytes:
            raise ValueError(f"a {shape} frame does not fit a {self.slot_bytes}-byte slot of {self.path}")
        offset = self._data_offset + slot * self.slot_bytes
        return np.frombuffer(self._mm, dtype=dtype, count=count, offset=offset).reshape(shape)

    # -- reader side -------------------------------------------------------------------------------

    def check(self, slot: int, seq: int) -> None:
        """Raise StaleSlotError unless `slot` still holds frame `seq`."""
        if self._written[slot] != seq:
            raise StaleSlotError(f"slot {slot} of {self.path.name} holds #{self._written[slot]}, not #{seq}")

    def release(self, slot: int, seq: int) -> None:
        """Give `slot` back to the writer once frame `seq` has been consumed (or dropped)."""
        if self._written[slot] == seq:
            self._released[slot] = seq

    def close(self) -> None:
        """Unmap the ring (views obtained from it must not be used afterwards). Idempotent."""
        if self._mm is None:
            return
        # Drop our own views before closing the map, or mmap refuses with "exported pointers exist".
        del self._written, self._released
        self._mm.close()
        self._mm = None
        os.close(self._fd)

    def unlink(self) -> None:
        """Remove the ring's file (mappings stay valid until closed)."""
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
