"""The inference worker's side of CUDA frame rings: NV12 slots → the engine's device input buffer.

`DeviceFrames` (a `streamer.workers.ring_reader.FrameReader`) maps each source's exported ring (`RingExport`)
once. For every ``nv12`` frame of a batch, `fill` checks the slot's sequence number and makes the executor
slot's CUDA stream wait on the slot's event; `take_batch` then launches the letterbox kernel
(`streamer.preprocess.cuda_kernel`) once for the whole batch on that stream, straight into the slot's
device input buffer, and records an event behind it. The ring slots are released once that event has
completed (`PendingReleases.poll`, called on every turn of the inference loop), never before: the writer
cannot overwrite a frame a kernel may still read, and the CPU never waits for the GPU. `take_batch` tells
the executor which items are already on the device (it copies only the others, CPU-ring frames, from its
pinned buffer).

With an executor that has no device input (the CPU executor, ONNX Runtime), an NV12 frame is copied to
the host and letterboxed by the NumPy model instead (`streamer.preprocess.nv12`): the same numbers,
slowly. Rings are closed (IPC handles) when their stream's worker exits or fails, or when a new export
replaces them; pending kernels reading them are waited for first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from streamer.cuda.runtime import check, load_cudart
from streamer.engine.executor import Executor
from streamer.messages import FrameReady, RingExport
from streamer.preprocess.cuda_kernel import Picture
from streamer.preprocess.letterbox import LetterboxGeometry
from streamer.preprocess.nv12 import YuvCoefficients, letterbox_nv12
from streamer.transport.cuda_ring import CudaRingReader, PendingReleases
from streamer.transport.ring import FrameRing, StaleSlotError

log = logging.getLogger(__name__)

MANY_CONTEXTS = 16
"""Above this many NVDEC source processes (one CUDA context each) without CUDA MPS, the worker says so once.
(A process may decode several streams: ``supervisor.nvdec_streams_per_process``.)"""


def mps_active() -> bool:
    """Whether a CUDA MPS control daemon is listening where this process's CUDA would look for it."""
    folder = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return Path(folder, "control").exists()


class DeviceFrames:
    """CUDA rings known to the inference worker, and the kernel that reads them."""

    def __init__(self, executor: Executor, swap_rb: bool) -> None:
        self.executor = executor
        self.input_w, self.input_h, self.swap_rb = executor.spec.width, executor.spec.height, swap_rb
        self.on_device = executor.on_gpu
        self.readers: dict[str, CudaRingReader] = {}
        self._stream_of: dict[str, str] = {}  # ring path → stream id
        self._pid_of: dict[str, int] = {}  # ring path → the source process that exported it
        self._warned = False
        self._hinted = False
        self.pending = PendingReleases(self._release)
        self._kernel: Any = None
        self._batch: dict[int, list[Picture]] = {}  # executor slot → pictures to letterbox on the device
        self._releases: dict[int, list[tuple[str, int, int]]] = {}
        self._coefficients: dict[tuple[int, int], YuvCoefficients] = {}

    # -- rings -------------------------------------------------------------------------------------

    def accept_export(self, export: RingExport) -> None:
        """Map a source's ring; any other ring of the same stream is replaced (closed once unused)."""
        if export.ring in self.readers:
            return
        self.stream_gone(export.stream)
        try:
            self.readers[export.ring] = CudaRingReader(export)
        except Exception as exc:  # a dead exporter, or a handle this process cannot open
            log.error("stream %s: cannot map CUDA frame ring %s: %s", export.stream, export.ring, exc)
            return
        self._stream_of[export.ring] = export.stream
        self._pid_of[export.ring] = export.pid
        contexts = len(set(self._pid_of.values()))
        if contexts == 1 and not self._hinted and not mps_active():
            self._hinted = True
            log.info(
                "NVDEC source processes have CUDA contexts of their own, which time-slice the GPU with this "
                "worker's: the engine ran 15-20 %% slower beside 16-48 NVDEC streams on an H200, 1 %% under "
                "CUDA MPS. For many streams, run the daemon under MPS: docs/gpu.md, "
                "systemd/yolostream-mps.service"
            )
        if contexts > MANY_CONTEXTS and not self._warned and not mps_active():
            self._warned = True
            log.warning(
                "%d NVDEC source processes, each with a CUDA context of its own, and no CUDA MPS: the GPU "
                "time-slices between the contexts and inference slows down (H200, 48 contexts: a batch of 16 "
                "took 22 ms instead of 9). Share processes (supervisor.nvdec_streams_per_process) or run the "
                "daemon under MPS: docs/gpu.md, systemd/yolostream-mps.service",
                contexts,
            )
        log.info(
            "stream %s: mapped CUDA frame ring %s (%d slots, %dx%d, pid %d)",
            export.stream, export.ring, len(export.event_handles), export.width, export.height, export.pid,
        )  # fmt: skip

    def stream_gone(self, stream: str) -> None:
        """Close the rings of `stream` (its worker exited, failed or re-exported)."""
        for ring in [r for r, s in self._stream_of.items() if s == stream]:
            self.pending.drain(ring)
            reader = self.readers.pop(ring, None)
            del self._stream_of[ring]
            self._pid_of.pop(ring, None)
            if reader is not None:
                reader.close()
                log.info("stream %s: closed CUDA frame ring %s", stream, ring)

    def _release(self, ring: str, slot: int, seq: int) -> None:
        reader = self.readers.get(ring)
        if reader is not None:
            reader.release(slot, seq)

    def release(self, note: FrameReady) -> None:
        """Give back the slot of a frame that was dropped before any kernel read it."""
        reader = self.readers.get(note.ring)
        if reader is not None:
            reader.release(note.slot, note.seq)
            return
        try:  # a ring whose export never arrived: its control block still takes the release
            with FrameRing.attach(note.ring) as control:
                control.release(note.slot, note.seq)
        except (OSError, ValueError):
            pass

    def poll(self) -> int:
        """Release the slots whose kernels have completed (no waiting)."""
        return self.pending.poll()

    # -- batches -------------------------------------------------------------------------------------

    def fill(self, slot: int, index: int, note: FrameReady, geometry: LetterboxGeometry) -> None:
        """Letterbox the frame of `note` into item `index` of executor slot `slot`.

        On the device (queued for the batch's kernel on the slot's stream) when the executor runs on the
        GPU, else through the host into its host input. Raises `StaleSlotError` when the frame is gone
        (its slot is released).
        """
        reader = self.readers.get(note.ring)
        if reader is None:
            self.release(note)
            raise StaleSlotError(f"CUDA ring {note.ring} is not mapped")
        coefficients = self._coefficients_of(note)
        reader.check(note.slot, note.seq)
        if not self.on_device:
            try:
                self._fill_host(reader, note, geometry, coefficients, self.executor.host_input(slot)[index])
            finally:
                reader.release(note.slot, note.seq)
            return
        _, stream = self.executor.device_input(slot)
        reader.wait(note.slot, stream)
        y_ptr, uv_ptr, pitch = reader.planes(note.slot)
        self._batch.setdefault(slot, []).append(Picture(y_ptr, uv_ptr, pitch, geometry, coefficients, index))
        self._releases.setdefault(slot, []).append((note.ring, note.slot, note.seq))

    def take_batch(self, slot: int) -> list[int]:
        """Close the batch being filled on executor slot `slot`: launch its letterbox kernel, record the
        release event behind it and return the item indices that are on the device (for `submit`)."""
        pictures = self._batch.pop(slot, [])
        releases = self._releases.pop(slot, [])
        if pictures:
            out_ptr, stream = self.executor.device_input(slot)
            self.kernel().launch_batch(pictures, out_ptr, stream)
            self.pending.record(stream, releases)
        return [p.index for p in pictures]

    def kernel(self) -> Any:
        if self._kernel is None:
            from streamer.preprocess.cuda_kernel import LetterboxKernel  # compiles on first use

            self._kernel = LetterboxKernel(
                self.input_w, self.input_h, swap_rb=self.swap_rb, dtype=self.executor.input_dtype
            )
        return self._kernel

    def _coefficients_of(self, note: FrameReady) -> YuvCoefficients:
        key = (note.colorspace, note.color_range)
        c = self._coefficients.get(key)
        if c is None:
            c = self._coefficients[key] = YuvCoefficients.for_frame(*key)
        return c

    def _fill_host(
        self,
        reader: CudaRingReader,
        note: FrameReady,
        geometry: LetterboxGeometry,
        coefficients: YuvCoefficients,
        out: np.ndarray,
    ) -> None:
        cudart = load_cudart()
        y_ptr, _, pitch = reader.planes(note.slot)  # (the UV plane follows the Y plane in a slot)
        check(cudart.cudaEventSynchronize(reader.events[note.slot]), "cudaEventSynchronize")
        rows = note.height + (note.height + 1) // 2
        nv12 = np.empty((rows, pitch), np.uint8)
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(cudart.cudaMemcpy(nv12.ctypes.data, y_ptr, nv12.nbytes, kind), "copy frame to host")
        reader.check(note.slot, note.seq)
        letterbox_nv12(
            nv12[: note.height], nv12[note.height :], note.width, note.height, self.input_w, self.input_h,
            coefficients, swap_rb=self.swap_rb, dtype=out.dtype, out=out,
        )  # fmt: skip

    def close(self) -> None:
        self.pending.close()
        for stream in set(self._stream_of.values()):
            self.stream_gone(stream)
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None
