"""The CUDA frame ring: NV12 frames in device memory shared between a source worker and the inference worker.

Owner (the source worker, `CudaRingWriter`): ``slots`` NV12 buffers in one ``cudaMalloc`` allocation,
pitch-linear (Y: `height` rows of `pitch` bytes, then UV: ``ceil(height / 2)`` rows), exported once with
``cudaIpcGetMemHandle``; one event per slot created with ``cudaEventInterprocess |
cudaEventDisableTiming`` and exported with ``cudaIpcGetEventHandle``. A decoded surface is copied
device-to-device into a free slot on the writer's stream and the slot's event recorded behind the copy;
nothing waits on the CPU. The handles travel once, in a `RingExport` notification; each frame is then
a plain `FrameReady` ("slot k holds frame n", ``layout="nv12"``).

Which slots are free lives in a small control block: a `streamer.transport.ring.FrameRing` file with no
pixels (one 64-byte slot each), so the CPU ring's sequence guard is reused as it is — ``written[k]``
set by the writer on commit, ``released[k]`` by the reader; a slot is free when they are equal; the
reader checks ``written[k] == seq`` before it uses a slot, so a recycled slot is never mistaken for the
announced frame.

Reader (the inference worker, `CudaRingReader`): opens the handles once (``cudaIpcOpenMemHandle``,
``cudaIpcOpenEventHandle``), makes its stream wait on the slot's event (``cudaStreamWaitEvent``: the GPU
waits, not the CPU), launches the letterbox kernel on that stream, records a "consumed" event behind
the kernel, and releases the slot only once that event has completed (`PendingReleases`, polled on
every turn of the inference loop). So the writer never overwrites a slot that a kernel may still read.

Worker death: the reader closes its mappings (``cudaIpcCloseMemHandle``) when the stream's `SourceExit`
or error arrives, or when a new `RingExport` replaces the ring (a restarted worker); pending kernels on
the ring are waited for first. Freeing memory another process still has mapped is undefined behaviour in
CUDA, so the reader also marks the control block (mapped / closed) and the writer frees a ring only
once its reader has unmapped it: a replaced ring when that shows, the last one at exit after sending
`SourceExit` (waiting at most `READER_CLOSE_WAIT_S`). A writer that crashes frees nothing itself; its
reader unmaps the ring when the worker's error event or its successor's export arrives.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamer.cuda.runtime import check, load_cudart
from streamer.messages import RingExport
from streamer.transport.ring import FrameRing, StaleSlotError

log = logging.getLogger(__name__)

IPC_HANDLE_BYTES = 64
PITCH_ALIGN = 256
CONTROL_SLOT_BYTES = 64
READER_CLOSE_WAIT_S = 10.0
"""How long a writer that is closing waits for the reader to unmap its ring before freeing it anyway."""
# The reader's state, in the first 8 bytes of the control block's slot 0 (the control block has no pixels).
_UNMAPPED, _MAPPED, _CLOSED = 0, 1, 2


def _reader_state(control: FrameRing, value: int | None = None) -> int:
    view = control.view(0, (1,), np.int64)
    if value is not None:
        view[0] = value
    state = int(view[0])
    del view  # no view may outlive the control block's mapping
    return state


def nv12_layout(width: int, height: int) -> tuple[int, int]:
    """(pitch, slot_bytes) of an NV12 slot for a `width` × `height` picture (pitch 256-aligned)."""
    pitch = (max(width, 2) + 1) // 2 * 2
    pitch = (pitch + PITCH_ALIGN - 1) // PITCH_ALIGN * PITCH_ALIGN
    rows = height + (height + 1) // 2
    slot_bytes = (pitch * rows + 4095) // 4096 * 4096
    return pitch, slot_bytes


def handle_bytes(handle: Any) -> bytes:
    """The 64 bytes of a cuda-python ``cudaIpcMemHandle_t`` / ``cudaIpcEventHandle_t``."""
    return ctypes.string_at(handle.getPtr(), IPC_HANDLE_BYTES)


def handle_from(kind: Any, data: bytes) -> Any:
    """A ``kind`` handle (e.g. ``cudart.cudaIpcMemHandle_t``) holding `data`."""
    if len(data) != IPC_HANDLE_BYTES:
        raise ValueError(f"an IPC handle has {IPC_HANDLE_BYTES} bytes, got {len(data)}")
    handle = kind()
    ctypes.memmove(handle.getPtr(), data, IPC_HANDLE_BYTES)
    return handle


class CudaRingWriter:
    """The source worker's ring of `slots` NV12 device buffers for `width` × `height` frames."""

    def __init__(
        self, control_path: str | os.PathLike[str], slots: int, width: int, height: int, device: int = 0
    ):
        self._cudart = cudart = load_cudart()
        self.device, self.width, self.height = device, width, height
        self.pitch, self.slot_bytes = nv12_layout(width, height)
        self.control = FrameRing.create(control_path, slots, CONTROL_SLOT_BYTES)
        self.slots = slots
        self.base = 0
        self.events: list[Any] = []
        self.stream: Any = None
        try:
            check(cudart.cudaSetDevice(device), "cudaSetDevice")
            self.stream = check(
                cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreate"
            )
            self.base = int(check(cudart.cudaMalloc(slots * self.slot_bytes), "cudaMalloc (frame ring)"))
            self._mem_handle = handle_bytes(
                check(cudart.cudaIpcGetMemHandle(self.base), "cudaIpcGetMemHandle")
            )
            flags = cudart.cudaEventInterprocess | cudart.cudaEventDisableTiming
            for _ in range(slots):
                self.events.append(check(cudart.cudaEventCreateWithFlags(flags), "cudaEventCreate"))
            self._event_handles = [
                handle_bytes(check(cudart.cudaIpcGetEventHandle(ev), "cudaIpcGetEventHandle"))
                for ev in self.events
            ]
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> Path:
        return self.control.path

    def export(self, stream_id: str) -> RingExport:
        return RingExport(
            stream=stream_id, ring=str(self.path), device=self.device, mem_handle=self._mem_handle,
            event_handles=list(self._event_handles), slot_bytes=self.slot_bytes, pitch=self.pitch,
            width=self.width, height=self.height, pid=os.getpid(),
        )  # fmt: skip

    def fits(self, width: int, height: int) -> bool:
        return (width, height) == (self.width, self.height)

    def planes(self, slot: int) -> tuple[int, int]:
        """Device addresses of the Y and UV planes of `slot`."""
        y = self.base + slot * self.slot_bytes
        return y, y + self.pitch * self.height

    def write(self, slot: int, y_ptr: int, uv_ptr: int, src_pitch: int, stream: Any = None) -> int:
        """Copy an NV12 picture (device planes, `src_pitch` bytes per row) into `slot`; its sequence number.

        The copies are enqueued on `stream` (default: the ring's own) and the slot's event recorded after
        them; the caller announces the frame right away (the reader's GPU waits for the event).
        """
        cudart = self._cudart
        stream = self.stream if stream is None else stream
        dst_y, dst_uv = self.planes(slot)
        width = (self.width + 1) // 2 * 2
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        for dst, src, rows in ((dst_y, y_ptr, self.height), (dst_uv, uv_ptr, (self.height + 1) // 2)):
            check(
                cudart.cudaMemcpy2DAsync(dst, self.pitch, src, src_pitch, width, rows, kind, stream),
                "copy frame",
            )
        check(cudart.cudaEventRecord(self.events[slot], stream), "cudaEventRecord")
        return self.control.commit(slot)

    def free_slot(self) -> int | None:
        return self.control.free_slot()

    def abandon(self, slot: int) -> None:
        self.control.abandon(slot)

    def busy(self) -> int:
        return self.control.busy()

    def reader_done(self) -> bool:
        """Whether no reader has the ring mapped any more (and no slot is held): safe to free."""
        return _reader_state(self.control) != _MAPPED and self.busy() == 0

    def close(self, wait_s: float = READER_CLOSE_WAIT_S) -> None:
        """Free the device memory and events and unmap the control block.

        Freeing memory that another process still has mapped is undefined behaviour in CUDA, so this first
        waits (up to `wait_s`) for the reader to unmap the ring; the caller has told it the stream ended.
        """
        cudart = self._cudart
        deadline = time.monotonic() + wait_s
        while self.base and _reader_state(self.control) == _MAPPED and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.base and _reader_state(self.control) == _MAPPED:
            log.warning(
                "frame ring %s: the reader still has it mapped after %g s; freeing it", self.path, wait_s
            )
        if self.stream is not None:
            cudart.cudaStreamSynchronize(self.stream)
        for ev in self.events:
            cudart.cudaEventDestroy(ev)
        self.events = []
        if self.base:
            cudart.cudaFree(self.base)
            self.base = 0
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.control.close()


class CudaRingReader:
    """The inference worker's view of one exported ring (see the module docstring)."""

    def __init__(self, export: RingExport) -> None:
        self._cudart = cudart = load_cudart()
        self.export = export
        self.control = FrameRing.attach(export.ring)
        self.base = 0
        self.events: list[Any] = []
        try:
            check(cudart.cudaSetDevice(export.device), "cudaSetDevice")
            mem = handle_from(cudart.cudaIpcMemHandle_t, export.mem_handle)
            self.base = int(
                check(
                    cudart.cudaIpcOpenMemHandle(mem, cudart.cudaIpcMemLazyEnablePeerAccess),
                    "cudaIpcOpenMemHandle",
                )
            )
            for data in export.event_handles:
                ev = handle_from(cudart.cudaIpcEventHandle_t, data)
                self.events.append(check(cudart.cudaIpcOpenEventHandle(ev), "cudaIpcOpenEventHandle"))
            _reader_state(self.control, _MAPPED)
        except BaseException:
            self.close()
            raise

    @property
    def path(self) -> str:
        return self.export.ring

    def planes(self, slot: int) -> tuple[int, int, int]:
        """(y_ptr, uv_ptr, pitch) of `slot` in this process's address space."""
        e = self.export
        y = self.base + slot * e.slot_bytes
        return y, y + e.pitch * e.height, e.pitch

    def check(self, slot: int, seq: int) -> None:
        """Raise `StaleSlotError` unless `slot` still holds frame `seq`."""
        self.control.check(slot, seq)

    def wait(self, slot: int, stream: Any) -> None:
        """Make `stream` wait (on the GPU) until the writer's copy into `slot` is complete."""
        check(self._cudart.cudaStreamWaitEvent(stream, self.events[slot], 0), "cudaStreamWaitEvent")

    def release(self, slot: int, seq: int) -> None:
        self.control.release(slot, seq)

    def close(self) -> None:
        """Close the IPC mappings (the caller made sure no kernel still reads them) and the control block."""
        cudart = self._cudart
        for ev in self.events:
            cudart.cudaEventDestroy(ev)
        self.events = []
        if self.base:
            cudart.cudaIpcCloseMemHandle(self.base)
            self.base = 0
            _reader_state(self.control, _CLOSED)  # the writer may free the memory now
        self.control.close()


@dataclass
class _Pending:
    event: Any
    releases: list[tuple[str, int, int]] = field(default_factory=list)  # (ring path, slot, seq)


class PendingReleases:
    """Slots to hand back once the GPU has passed the kernels that read them.

    After the kernels of a batch are enqueued on a stream, `record` puts an event behind them with the
    (ring, slot, seq) they read; `poll` releases every group whose event has completed (a
    ``cudaEventQuery``, never a wait), in order; `drain` waits for the groups of one ring (before it is
    closed). Events are reused from a small pool.
    """

    def __init__(self, release: Callable[[str, int, int], None]) -> None:
        self._cudart = load_cudart()
        self._release = release
        self._pending: list[_Pending] = []
        self._pool: list[Any] = []

    def record(self, stream: Any, releases: list[tuple[str, int, int]]) -> None:
        if not releases:
            return
        cudart = self._cudart
        event = (
            self._pool.pop()
            if self._pool
            else check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming), "cudaEventCreate")
        )
        check(cudart.cudaEventRecord(event, stream), "cudaEventRecord")
        self._pending.append(_Pending(event, list(releases)))

    def poll(self) -> int:
        """Release the slots of every completed group; how many slots were released."""
        done = 0
        still: list[_Pending] = []
        for p in self._pending:
            (err,) = self._cudart.cudaEventQuery(p.event)
            if err == self._cudart.cudaError_t.cudaSuccess:
                done += self._finish(p)
            elif err == self._cudart.cudaError_t.cudaErrorNotReady:
                still.append(p)
            else:
                check((err,), "cudaEventQuery")
        self._pending = still
        return done

    def drain(self, ring: str | None = None) -> None:
        """Wait for (and release) the groups that read `ring` (every group when None)."""
        still = []
        for p in self._pending:
            if ring is None or any(r == ring for r, _, _ in p.releases):
                check(self._cudart.cudaEventSynchronize(p.event), "cudaEventSynchronize")
                self._finish(p)
            else:
                still.append(p)
        self._pending = still

    def _finish(self, p: _Pending) -> int:
        for ring, slot, seq in p.releases:
            self._release(ring, slot, seq)
        self._pool.append(p.event)
        return len(p.releases)

    def __len__(self) -> int:
        return sum(len(p.releases) for p in self._pending)

    def close(self) -> None:
        self.drain()
        for event in self._pool:
            self._cudart.cudaEventDestroy(event)
        self._pool = []


__all__ = [
    "CudaRingReader",
    "CudaRingWriter",
    "PendingReleases",
    "StaleSlotError",
    "handle_bytes",
    "handle_from",
    "nv12_layout",
]
