"""The source worker's side of its frame rings: which ring a frame goes into (`RingWriter`: the
shared-memory ring, or the CUDA ring of `streamer.workers.cuda_ring_writer` for frames NVDEC decoded),
and `hand_over`, one policy for both.

A file source waits for a free slot, so no frame is skipped; a live (or paced) one never waits: with
every slot busy the frame is dropped (`DROP_RING_FULL`). A frame whose announcement cannot be queued is
dropped too (`DROP_NOTIFY_FULL`) and its slot given back. Drops are counted in the stream's metrics,
except while the worker stops (the frame in hand then is not the pipeline's loss), and the next frame
announced says how many went before it (`Prior`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from streamer.messages import FrameReady
from streamer.observability.metrics import DROP_NOTIFY_FULL, DROP_RING_FULL, SourceMetrics
from streamer.sources import DeviceFrame
from streamer.transport.notify import NotifySender
from streamer.transport.ring import FrameRing
from streamer.workers.common import NO_PRIOR, Prior, StopFlag, heartbeat, next_generation

if TYPE_CHECKING:
    from streamer.sources.base import Frame
    from streamer.workers.cuda_ring_writer import DeviceRing

log = logging.getLogger(__name__)

SLOT_WAIT_S = (0.0002, 0.002)
"""A file source waiting for a free ring slot polls with this backoff (first, longest sleep). The cap
is short on purpose: a slot comes back within one turn of the inference loop, and with a 20 ms cap the
sleep, not the GPU, set the pace (16 × 1080p fp16 ran at 33 frames/s per stream on an H200)."""


def wait_for_slot(
    free_slot: Callable[[], int | None], live: bool, stop: Any, on_wait: Callable[[], bool] = lambda: True
) -> int | None:
    """A free slot of a frame ring, or None: a live source never waits (the frame is dropped).

    A file source waits until a slot is free, the worker is stopping, or `on_wait()` — called between
    polls, e.g. to take back the slots of a replaced inference worker — returns False.
    """
    slot = free_slot()
    delay = SLOT_WAIT_S[0]
    while slot is None:
        if live or stop.is_set():
            return None
        time.sleep(delay)
        heartbeat().beat()  # waiting for the inference worker is progress of ours
        delay = min(delay * 2, SLOT_WAIT_S[1])
        if not on_wait():
            return None
        slot = free_slot()
    return slot


class RingWriter:
    """Owns the stream's ring; re-creates it (a new generation) when a frame no longer fits.

    `epoch` (the supervisor's ``inference_epoch``, a shared integer) goes up when the inference worker is
    replaced: the frames announced to the dead one will never be released, so their slots are taken back.
    """

    def __init__(
        self, run_dir: str, stream_id: str, slots: int, epoch: Any = None, cuda_device: int = 0
    ) -> None:
        self._dir = Path(run_dir)
        self._cuda_device = cuda_device
        self._stream = stream_id
        self._slots = slots
        self._generation = 0
        self._epoch = epoch
        self._epoch_seen = epoch.value if epoch is not None else 0
        self.ring: FrameRing | None = None
        self.device: DeviceRing | None = None
        """The CUDA ring, for frames decoded by NVDEC (created on the first one)."""

    def reclaim_if_reader_replaced(self) -> int:
        """Free the slots held by a replaced inference worker; how many held a frame."""
        if self._epoch is None or self._epoch.value == self._epoch_seen:
            return 0
        self._epoch_seen = self._epoch.value
        if self.device is not None:
            self.device.reader_replaced()
        if self.ring is None:
            return 0
        held = self.ring.busy()
        for slot in range(self.ring.slots):
            self.ring.abandon(slot)  # (a frame announced to the new worker meanwhile fails its seq check)
        if held:
            log.info(
                "stream %s: took back %d frame slot(s) from the replaced inference worker", self._stream, held
            )
        return held

    def ring_for(self, nbytes: int) -> FrameRing:
        self.reclaim_if_reader_replaced()
        if self.ring is None or self.ring.slot_bytes < nbytes:
            if self.ring is not None:
                self.ring.close()  # its file stays until the supervisor removes the run directory
            self._generation = next_generation()
            # The pid makes every worker's rings new files: a restarted worker never truncates a file
            # that the inference worker still has mapped, and the supervisor can tell whose rings are dead.
            # (The generation counts per process: a stream restarted inside a decoder group gets new files.)
            path = self._dir / f"{self._stream}.{os.getpid()}.{self._generation}.ring"
            self.ring = FrameRing.create(path, self._slots, nbytes)
        return self.ring

    def device_ring(self) -> DeviceRing:
        if self.device is None:
            from streamer.workers.cuda_ring_writer import DeviceRing

            self.device = DeviceRing(str(self._dir), self._stream, self._slots, self._cuda_device)
        return self.device

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.device is not None:
            self.device.close()
            self.device = None


class _Slots(Protocol):
    """What the policy needs of either ring."""

    @property
    def path(self) -> Path: ...
    def free_slot(self) -> int | None: ...
    def abandon(self, slot: int) -> None: ...


def hand_over(
    stream: str,
    frame: Frame,
    writer: RingWriter,
    sender: NotifySender,
    live: bool,
    stop: StopFlag,
    metrics: SourceMetrics | None = None,
    prior: Prior = NO_PRIOR,
) -> str | None:
    """Copy `frame` into a free slot of its ring and announce it (with `prior`); None, or why it was
    dropped (a ``DROP_*`` reason, counted in `metrics`)."""
    ring: _Slots
    if isinstance(frame, DeviceFrame):  # decoded by NVDEC: into the stream's CUDA ring
        rings = writer.device_ring()
        cuda = ring = rings.ring_for(frame.width, frame.height)
        size = (frame.width, frame.height)
        layout: dict[str, Any] = {
            "layout": "nv12", "colorspace": frame.colorspace, "color_range": frame.color_range,
        }  # fmt: skip

        def write(slot: int) -> int:
            return cuda.write(slot, frame.y_ptr, frame.uv_ptr, frame.pitch, stream=frame.stream)

        def on_wait() -> bool:
            writer.reclaim_if_reader_replaced()  # (the reader holding the slots may have died)
            return rings.ensure_exported(sender)

        ready = rings.ensure_exported(sender)
    else:
        image = frame.image
        shm = ring = writer.ring_for(image.nbytes)
        size, layout = (image.shape[1], image.shape[0]), {}

        def write(slot: int) -> int:
            shm.view(slot, image.shape)[...] = image
            return shm.commit(slot)

        def on_wait() -> bool:
            writer.reclaim_if_reader_replaced()  # (the reader holding the slots may have died)
            return True

        ready = True

    def note(slot: int, seq: int) -> FrameReady:
        return FrameReady(
            stream, str(ring.path), slot, seq, frame.index, frame.pts, frame.capture_time, *size, live,
            after=prior.after, ring_full=prior.ring_full, notify_full=prior.notify_full, **layout,
        )  # fmt: skip

    lost = _announce(ring, write, note, sender, live, stop, on_wait) if ready else DROP_NOTIFY_FULL
    if lost is not None and metrics is not None and not stop.is_set():
        (metrics.dropped_ring_full if lost == DROP_RING_FULL else metrics.dropped_notify_full).inc()
    return lost


def _announce(
    ring: _Slots,
    write: Callable[[int], int],
    note: Callable[[int, int], FrameReady],
    sender: NotifySender,
    live: bool,
    stop: StopFlag,
    on_wait: Callable[[], bool],
) -> str | None:
    """The policy: a slot (`wait_for_slot`), the frame written into it (`write` gives its seq), the
    announcement sent; else the reason it was dropped, its slot given back."""
    slot = wait_for_slot(ring.free_slot, live, stop, on_wait)
    if slot is None:
        return DROP_RING_FULL
    if not sender.send(note(slot, write(slot))):
        ring.abandon(slot)
        return DROP_NOTIFY_FULL
    return None
