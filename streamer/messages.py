"""Small records that cross process boundaries inside the daemon.

Pixels never travel in these: a frame crosses as a reference to a slot of its stream's shared-memory ring
(`FrameReady`), checked against the slot's sequence number so that a recycled slot is never mistaken for
the frame that was announced. They are msgspec structs, encoded as MessagePack arrays on the internal
notification socket (see `transport.notify`). The public wire format is in `streamer.output.protocol`.
"""

from __future__ import annotations

import time

import msgspec

# Kinds of stream events, published as `evt.<stream>` messages.
EVENT_STARTED = "started"  # the source opened; detail carries codec, size and rate
EVENT_EOS = "eos"  # the source ended normally (end of file, not looping); no more frames will follow
EVENT_ERROR = "error"  # the source failed (missing file, corrupt data, unsupported codec, worker died)
EVENT_DROPPED = "dropped"  # frames were lost (detail: first..last frame index, counts by reason)
EVENT_RECONNECTING = "reconnecting"  # a live stream failed (or froze); detail: attempt, delay_s, reason
EVENT_DOWN = "down"  # reconnect.down_after failures in a row: retried at the slow rate from now on
EVENT_UP = "up"  # frames flow again after failures; detail: downtime_s, attempts
EVENT_FROZEN = "frozen"  # the same picture for frozen_after_s: the stream is reconnected
EVENT_FALLBACK = "fallback"  # NVDEC could not decode the stream: it goes on with the CPU decoder
EVENT_STALLED = "stalled"  # a worker of the stream stopped advancing (heartbeat): killed and restarted
EVENT_MOVED = "moved"  # its inference worker failed for good (engine.devices): the stream moved to another
EVENT_KINDS = (
    EVENT_STARTED, EVENT_EOS, EVENT_ERROR, EVENT_DROPPED,
    EVENT_RECONNECTING, EVENT_DOWN, EVENT_UP, EVENT_FROZEN, EVENT_FALLBACK, EVENT_STALLED,
    EVENT_MOVED,
)  # fmt: skip


class FrameReady(msgspec.Struct, frozen=True, tag="frame", array_like=True):
    """Slot `slot` of the ring at `ring` holds frame `index` of `stream`."""

    stream: str
    ring: str
    """Path of the ring's shared-memory file; a new path means the source re-created its ring."""
    slot: int
    seq: int
    """The ring's write sequence number for this frame (guards against a recycled slot)."""
    index: int
    """0-based count of frames the source produced (keeps counting across loops of a file)."""
    pts: float | None
    """Presentation time in seconds, as the container gives it (offset by the duration on each loop)."""
    capture_time: float
    """Wall-clock time (Unix seconds) at which the frame was decoded."""
    width: int
    height: int
    live: bool = False
    """True for sources whose old frames may be dropped in favour of the newest when inference lags."""
    layout: str = "rgb24"
    """``rgb24``: ``HxWx3`` RGB in the shared-memory ring at `ring`; ``nv12``: NV12 in the device memory
    of the CUDA ring whose control block is `ring` (announced by a `RingExport`)."""
    colorspace: int = 2
    """nv12 only: the frame's AVColorSpace code (2: unspecified, converted as BT.601, as FFmpeg does)."""
    color_range: int = 0
    """nv12 only: the frame's AVColorRange code (2: full range; 0, 1: limited)."""
    after: int = -1
    """Index of the frame this source worker announced before this one (-1: none yet)."""
    ring_full: int = 0
    """Frames after `after` that the source dropped because every ring slot was busy."""
    notify_full: int = 0
    """Frames after `after` that the source dropped because the notification queue was full."""


class RingExport(msgspec.Struct, frozen=True, tag="ring", array_like=True):
    """A source worker's CUDA frame ring, sent once (and again when the ring or the reader changes).

    The device memory of all slots is one allocation exported with ``cudaIpcGetMemHandle``; slot ``k``
    starts at ``k * slot_bytes``: the Y plane (`height` rows of `pitch` bytes) then the interleaved UV
    plane (``ceil(height / 2)`` rows). Each slot has an interprocess event, recorded after the frame was
    copied in; the reader's stream waits on it. Which slots are free lives in the control block at
    `ring` (a `streamer.transport.ring.FrameRing` file without pixels), with its sequence guard.
    """

    stream: str
    ring: str
    """Path of the control block; `FrameReady.ring` names it for every frame of this ring."""
    device: int
    mem_handle: bytes
    event_handles: list[bytes]
    slot_bytes: int
    pitch: int
    width: int
    height: int
    pid: int


class StreamEvent(msgspec.Struct, frozen=True, tag="event", array_like=True):
    """Something happened to a stream: started, ended, failed, dropped frames."""

    stream: str
    kind: str
    message: str = ""
    time: float = msgspec.field(default_factory=time.time)
    detail: dict[str, str | int | float] = msgspec.field(default_factory=dict)


class SourceExit(msgspec.Struct, frozen=True, tag="exit", array_like=True):
    """The source worker of `stream` is exiting: no frame of it will follow on this connection."""

    stream: str


class Shutdown(msgspec.Struct, frozen=True, tag="shutdown", array_like=True):
    """From the supervisor: finish the frames already announced, publish them, and exit."""

    expect_exits: list[str] = msgspec.field(default_factory=list)
    """Streams whose `SourceExit` may still be in flight on other connections: wait for them (bounded)."""


Notification = FrameReady | RingExport | StreamEvent | SourceExit | Shutdown
