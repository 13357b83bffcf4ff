"""What the inference worker knows of each stream: frames waiting, frames in flight, events, counters.

`StreamBook` holds one `StreamState` per stream. Notifications are queued per stream in arrival order; a
stream's event waits behind the frames announced before it, and is published once they all have been
(so a subscriber sees `eos` after the last frame's detections). `oldest_frames` hands out the frames that
waited longest across streams, each stream's in order; `drop_stale_live` keeps only the newest waiting
frame of a live stream (the others are released and counted).

Every frame index is accounted for: published, or dropped with a reason. Drops on this side are counted
where they happen; those of the source (ring or notification queue full) arrive with the next frame it
announces (`FrameReady.after`, ``ring_full``, ``notify_full``); frames announced to an inference worker
that died before accounting for them are found from the stream's ledger record (`streamer.workers.ledger`)
and dropped as ``inference_restart``. Drops collect in a `DropReport` (the span of their indices and a
count per reason) that goes out as one ``dropped`` event per second at most, and before any other event.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from streamer.messages import EVENT_DROPPED, FrameReady, StreamEvent
from streamer.observability.metrics import (
    DROP_INFERENCE_BEHIND,
    DROP_INFERENCE_RESTART,
    DROP_NOTIFY_FULL,
    DROP_RING_FULL,
    DROP_STALE_SLOT,
    StreamMetrics,
    inference_metrics,
)
from streamer.workers.ledger import Ledger, LedgerRecord


@dataclass
class DropReport:
    """Frames dropped since a stream's last ``dropped`` event: every index in ``first..last`` that was not
    published, counted by reason."""

    first: int
    last: int
    reasons: Counter[str] = field(default_factory=Counter)

    def event(self, stream: str, total: int) -> StreamEvent:
        n = sum(self.reasons.values())
        why = ", ".join(f"{count} {reason}" for reason, count in sorted(self.reasons.items()))
        span = f"frame {self.first}" if self.first == self.last else f"frames {self.first}-{self.last}"
        return StreamEvent(
            stream, EVENT_DROPPED, f"{n} frame(s) dropped in {span}: {why}",
            detail={"first": self.first, "last": self.last, "dropped": n, "dropped_total": total,
                    **self.reasons},
        )  # fmt: skip


@dataclass
class StreamState:
    """One stream, as the inference worker sees it."""

    id: str
    queue: deque[FrameReady | StreamEvent] = field(default_factory=deque)
    arrivals: deque[float] = field(default_factory=deque)  # perf_counter arrival time of each queued frame
    batched: deque[int] = field(default_factory=deque)
    """Indices of the stream's frames in flight (in a batch), oldest first."""
    published: int = 0
    dropped: int = 0
    exited: bool = False
    state: str = "starting"
    decoder: str = ""
    last_frame_time: float = 0.0
    width: int = 0
    height: int = 0
    """The size of the stream's last announced frame (0: none yet)."""
    record: LedgerRecord | None = None
    """Where the stream's accounting outlives this worker (None: kept in memory only)."""
    expected: int | None = None
    """One past the highest frame index announced (None: none yet): every index below it is accounted
    for, queued or in flight."""
    report: DropReport | None = None
    metrics: StreamMetrics = field(init=False, repr=False)
    _inherited: tuple[int, int, int] | None = field(default=None, repr=False)
    """(lowest unaccounted index, how many unaccounted, one past the highest announced) as the previous
    worker left them: what it lost is found from the first frame announced to this one."""

    def __post_init__(self) -> None:
        self.metrics = inference_metrics().stream(self.id)
        rec = self.record
        if rec is None:
            return
        self.published, self.dropped = rec.published, rec.dropped  # (all 0 for a new record)
        self.state, self.decoder = rec.state or self.state, rec.decoder
        if rec.next_frame:  # frames were announced to the worker before this one
            self._inherited = (rec.low, rec.unaccounted, rec.next_frame)
            self.expected = rec.next_frame

    @property
    def inflight(self) -> int:
        return len(self.batched)

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
        return not self.queue and not self.batched

    # -- accounting --------------------------------------------------------------------------------

    def announced(self, note: FrameReady) -> None:
        """Account for the frames before `note` that will never be announced to this worker."""
        if self._inherited is not None:
            self._lost_with_previous_worker(note)
        expected = self.expected
        if expected is not None and note.index < expected and note.after < 0:
            expected = None  # a new source worker (a file starts again at 0): a new count
        first = max(note.after + 1, expected or 0)
        by_source = {DROP_RING_FULL: note.ring_full, DROP_NOTIFY_FULL: note.notify_full}
        if note.index > first:  # (frames thinned by fps_limit in between are no loss)
            self.lost(first, note.index - 1, by_source)
        self.expected = max(expected or 0, note.index + 1)

    def _lost_with_previous_worker(self, note: FrameReady) -> None:
        low, unaccounted, announced = self._inherited  # type: ignore[misc]
        self._inherited = None
        # Indices low..announced-1 that were accounted for, and those announced to the dead worker that
        # it never read (after it, up to note.after; their own drop counts went with them).
        accounted = announced - low - unaccounted
        last = max(note.after, announced - 1)
        self.lost(low, last, {DROP_INFERENCE_RESTART: last - low + 1 - accounted})

    def lost(self, first: int, last: int, reasons: dict[str, int]) -> None:
        """Frames in ``first..last`` were dropped, so many for each reason."""
        n = sum(reasons.values())
        if n <= 0:
            return
        report = self.report
        if report is None:
            report = self.report = DropReport(first, last)
        report.first, report.last = min(report.first, first), max(report.last, last)
        report.reasons.update({reason: count for reason, count in reasons.items() if count})
        self.dropped += n
        m = self.metrics  # (the source's own drops are counted in /metrics by the source worker)
        for reason, counter in (
            (DROP_INFERENCE_BEHIND, m.dropped_behind), (DROP_STALE_SLOT, m.dropped_stale),
            (DROP_INFERENCE_RESTART, m.dropped_restart),
        ):  # fmt: skip
            if reasons.get(reason):
                counter.inc(reasons[reason])
        self.sync()

    def take(self, note: FrameReady) -> None:
        """`note`'s frame went into a batch."""
        self.batched.append(note.index)

    def published_frame(self, index: int, seq: int) -> None:
        """Frame `index` (in flight) was published as message `seq`."""
        if self.batched and self.batched[0] == index:
            self.batched.popleft()  # (batches finish in order: always the oldest)
        else:
            self.batched.remove(index)
        self.published += 1
        self.sent(seq)

    def sent(self, seq: int) -> None:
        """A message of the stream went out as `seq`."""
        if self.record is not None:
            self.record.next_seq = seq + 1
            self.sync()

    def take_report(self) -> StreamEvent | None:
        """The ``dropped`` event for the drops since the last one, if any (and forget them)."""
        report, self.report = self.report, None
        return report.event(self.id, self.dropped) if report is not None else None

    def set_state(self, state: str, decoder: str) -> None:
        self.state, self.decoder = state, decoder
        if self.record is not None:
            self.record.state, self.record.decoder = state, decoder

    def sync(self) -> None:
        """Write the stream's accounting to its ledger record (a few stores into shared memory)."""
        rec = self.record
        if rec is None or self.expected is None:
            return
        queued = next((item.index for item in self.queue if isinstance(item, FrameReady)), None)
        low = self.batched[0] if self.batched else queued if queued is not None else self.expected
        rec.next_frame, rec.low, rec.unaccounted = self.expected, low, len(self.batched) + len(self.arrivals)
        rec.published, rec.dropped = self.published, self.dropped


class StreamBook:
    """Every stream the worker has heard of, and the frames and events queued for each."""

    def __init__(
        self, ledger: Ledger | None = None, on_new: Callable[[StreamState], None] | None = None
    ) -> None:
        self.streams: dict[str, StreamState] = {}
        self.ledger = ledger
        self._on_new = on_new
        """Called with each stream the book makes (e.g. one moved here from a failed worker, with its
        ledger record: its seq goes on)."""
        if ledger is not None:  # a replaced worker's streams: their state and counts carry over
            for stream in ledger.streams():
                self.get(stream)

    def __iter__(self) -> Iterator[StreamState]:
        return iter(self.streams.values())

    def __getitem__(self, stream: str) -> StreamState:
        return self.streams[stream]

    def get(self, stream: str) -> StreamState:
        state = self.streams.get(stream)
        if state is None:
            record = self.ledger.record(stream) if self.ledger is not None else None
            state = self.streams[stream] = StreamState(stream, record=record)
            if self._on_new is not None:
                self._on_new(state)
        return state

    def add_frame(self, note: FrameReady, now: float) -> None:
        stream = self.get(note.stream)
        stream.exited = False  # a new worker (a restart): its rings must not be closed for the old one's exit
        stream.announced(note)
        stream.width, stream.height = note.width, note.height
        stream.queue.append(note)
        stream.arrivals.append(now)
        stream.sync()

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
            stream.take(note)  # type: ignore[arg-type]
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
                stream.lost(note.index, note.index, {DROP_INFERENCE_BEHIND: 1})  # type: ignore[union-attr]
                dropped += 1
        return dropped

    def due_events(self) -> Iterator[tuple[StreamState, StreamEvent]]:
        """Events whose earlier frames have all been published, taken off their queues in order."""
        for stream in self.streams.values():
            while stream.queue and isinstance(stream.queue[0], StreamEvent) and stream.inflight == 0:
                event = stream.queue.popleft()
                yield stream, event  # type: ignore[misc]

    def busy(self) -> bool:
        return any(s.queue or s.batched for s in self.streams.values())
