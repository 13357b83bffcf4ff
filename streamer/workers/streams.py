"""What the inference worker knows of each stream: frames waiting, frames in flight, events, counters.

`StreamBook` holds one `StreamState` per stream. Notifications are queued per stream in arrival order; a
stream's event waits behind the frames announced before it, and is published once they all have been
(so a subscriber sees `eos` after the last frame's detections). `oldest_frames` hands out the frames that
waited longest across streams, each stream's in order; `drop_stale_live` keeps only the newest waiting
frame of a live stream (the others are released and counted).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from streamer.messages import FrameReady, StreamEvent
from streamer.metrics import StreamMetrics, inference_metrics


@dataclass
class StreamState:
    """One stream, as the inference worker sees it."""

    id: str
    queue: deque[FrameReady | StreamEvent] = field(default_factory=deque)
    arrivals: deque[float] = field(default_factory=deque)  # perf_counter arrival time of each queued frame
    inflight: int = 0
    published: int = 0
    dropped: int = 0
    dropped_reported: int = 0
    exited: bool = False
    state: str = "starting"
    decoder: str = ""
    last_frame_time: float = 0.0
    metrics: StreamMetrics = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = inference_metrics().stream(self.id)

    def frames_waiting(self) -> int:
        """Frames at the head of the queue, before any event (events wait for the frames before them)."""
        n = 0
        for item in self.queue:
            if not isinstance(item, FrameReady):
                break
            n += 1
        return n

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing in flight."""
        return not self.queue and self.inflight == 0


class StreamBook:
    """Every stream the worker has heard of, and the frames and events queued for each."""

    def __init__(self) -> None:
        self.streams: dict[str, StreamState] = {}

    def __iter__(self) -> Iterator[StreamState]:
        return iter(self.streams.values())

    def __getitem__(self, stream: str) -> StreamState:
        return self.streams[stream]

    def get(self, stream: str) -> StreamState:
        state = self.streams.get(stream)
        if state is None:
            state = self.streams[stream] = StreamState(stream)
        return state

    def add_frame(self, note: FrameReady, now: float) -> None:
        stream = self.get(note.stream)
        stream.exited = False  # a new worker (a restart): its rings must not be closed for the old one's exit
        stream.queue.append(note)
        stream.arrivals.append(now)

    def add_event(self, event: StreamEvent) -> None:
        self.get(event.stream).queue.append(event)

    def waiting(self) -> int:
        """Frames at the heads of the streams' queues, ready to be batched."""
        return sum(s.frames_waiting() for s in self.streams.values())

    def oldest_arrival(self) -> float | None:
        return min((s.arrivals[0] for s in self.streams.values() if s.arrivals), default=None)

    def oldest_frames(self, n: int) -> list[tuple[StreamState, FrameReady, float]]:
        """Take the `n` oldest waiting frames across streams (each stream's frames stay in order), with
        their arrival times."""
        taken: list[tuple[StreamState, FrameReady, float]] = []
        heads = {s.id: s for s in self.streams.values() if s.queue and isinstance(s.queue[0], FrameReady)}
        while len(taken) < n and heads:
            stream = min(heads.values(), key=lambda s: s.arrivals[0])
            note = stream.queue.popleft()
            taken.append((stream, note, stream.arrivals.popleft()))  # type: ignore[arg-type]
            if not (stream.queue and isinstance(stream.queue[0], FrameReady)):
                del heads[stream.id]
        return taken

    def drop_stale_live(self, release: Callable[[StreamState, FrameReady], None]) -> int:
        """Keep only the newest waiting frame of each live stream; release and count the others."""
        dropped = 0
        for stream in self.streams.values():
            while (
                stream.frames_waiting() > 1
                and isinstance(stream.queue[0], FrameReady)
                and stream.queue[0].live
            ):
                note = stream.queue.popleft()
                stream.arrivals.popleft()
                release(stream, note)  # type: ignore[arg-type]
                stream.dropped += 1
                stream.metrics.dropped_behind.inc()
                dropped += 1
        return dropped

    def due_events(self) -> Iterator[tuple[StreamState, StreamEvent]]:
        """Events whose earlier frames have all been published, taken off their queues in order."""
        for stream in self.streams.values():
            while stream.queue and isinstance(stream.queue[0], StreamEvent) and stream.inflight == 0:
                event = stream.queue.popleft()
                yield stream, event  # type: ignore[misc]

    def busy(self) -> bool:
        return any(s.queue or s.inflight for s in self.streams.values())
