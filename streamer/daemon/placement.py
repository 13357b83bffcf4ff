"""Which inference worker carries which stream: pure functions and one small record, no processes.

With ``engine.devices`` the daemon runs one inference worker per listed device. Each stream is placed on
one worker and stays there (its frames, sequence numbers and CUDA ring live with that worker):

- ``sources[].device`` pins a stream to a worker;
- otherwise the stream goes to the usable worker with the least *expected load*: the sum of its streams'
  pixels per second (width × height × frames per second, measured once the stream publishes), a stream
  not measured yet counting as the mean of those that are (or 1 when none is: streams are then counted);
- ties go to the lower worker index;
- a stream already placed is never moved by a later placement (a reload places only the added ones);
  `evacuate` moves the streams of a worker that failed for good, largest first, onto the others.

Worker names are ``gpuN`` for ``cuda:N`` and ``cpuK`` for the K-th ``cpu`` entry
(`streamer.config.worker_names`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field


class PlacementError(ValueError):
    """No worker can take a stream (every worker failed for good)."""


def stream_loads(streams: Iterable[str], rates: Mapping[str, float]) -> dict[str, float]:
    """Each stream's expected load: its measured pixel rate, else the mean of the measured ones (else 1)."""
    streams = list(streams)
    known = [rates[s] for s in streams if s in rates]
    default = sum(known) / len(known) if known and sum(known) > 0 else 1.0
    return {s: rates.get(s, default) for s in streams}


def worker_loads(assignment: Mapping[str, int], rates: Mapping[str, float], workers: int) -> list[float]:
    """The summed expected load of each worker's streams (`stream_loads`)."""
    loads = [0.0] * workers
    for sid, load in stream_loads(assignment, rates).items():
        loads[assignment[sid]] += load
    return loads


def choose(loads: Sequence[float], usable: Collection[int], pinned: int | None = None) -> int:
    """The worker for a new stream: `pinned` when usable, else the usable one with the least load."""
    if pinned is not None and pinned in usable:
        return pinned
    if not usable:
        raise PlacementError("no inference worker is left to take the stream")
    return min(usable, key=lambda i: (loads[i], i))


@dataclass
class Placement:
    """The daemon's assignment of streams to workers, kept by the supervisor.

    Parameters:
        names: the workers' names (`streamer.config.worker_names`), by index.
    """

    names: Sequence[str]
    assignment: dict[str, int] = field(default_factory=dict)
    """Stream id → worker index."""
    failed: set[int] = field(default_factory=set)
    """Workers that failed for good: nothing is placed on them any more."""

    @property
    def usable(self) -> list[int]:
        return [i for i in range(len(self.names)) if i not in self.failed]

    def index_of(self, name: str) -> int:
        return list(self.names).index(name)

    def loads(self, rates: Mapping[str, float]) -> list[float]:
        return worker_loads(self.assignment, rates, len(self.names))

    def place(self, sid: str, rates: Mapping[str, float], pinned: str | None = None) -> tuple[int, str]:
        """Place stream `sid` (kept where it is if already placed): ``(worker index, why)`` for the log.

        Raises:
            PlacementError: every worker has failed.
        """
        if sid in self.assignment:
            return self.assignment[sid], "already placed"
        others = {s: w for s, w in self.assignment.items()}
        loads = worker_loads(others, rates, len(self.names))
        want = self.index_of(pinned) if pinned is not None else None
        index = choose(loads, self.usable, want)
        if want is not None and index == want:
            why = "sources[].device"
        elif want is not None:
            why = f"its device {pinned} has failed; least loaded"
        else:
            why = "least loaded"
        shown = ", ".join(f"{n} {_load(x)}" for n, x in zip(self.names, loads, strict=True))
        self.assignment[sid] = index
        return index, f"{why} (loads: {shown})"

    def forget(self, sid: str) -> None:
        self.assignment.pop(sid, None)

    def streams_of(self, index: int) -> list[str]:
        return [s for s, w in self.assignment.items() if w == index]

    def evacuate(self, index: int, rates: Mapping[str, float]) -> dict[str, int]:
        """Mark worker `index` failed and move its streams, largest first, onto the least loaded others.

        Returns:
            Stream id → its new worker index.

        Raises:
            PlacementError: no other worker is usable (the streams stay assigned to `index`).
        """
        self.failed.add(index)
        moving = self.streams_of(index)
        if not self.usable:
            raise PlacementError(f"inference worker {self.names[index]} failed and no other is left")
        sizes = stream_loads(self.assignment, rates)
        for sid in moving:
            del self.assignment[sid]
        moved = {}
        for sid in sorted(moving, key=lambda s: (-sizes[s], s)):
            loads = worker_loads(self.assignment, rates, len(self.names))
            moved[sid] = self.assignment[sid] = choose(loads, self.usable)
        return moved


class LoadMeter:
    """Each stream's pixel rate (width × height × frames published per second), from the status files.

    Parameters:
        window_s: the rate is measured over at least this long (a new measure replaces the last).
    """

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.rates: dict[str, float] = {}
        """Stream id → pixels per second, for the streams measured so far."""
        self._since: dict[str, tuple[float, int]] = {}

    def update(self, now: float, streams: Mapping[str, tuple[int, int, int]]) -> None:
        """Take each stream's ``(published, width, height)`` as of monotonic time `now`."""
        for sid, (published, width, height) in streams.items():
            since = self._since.get(sid)
            if since is None or published < since[1]:  # (new, or counting again)
                self._since[sid] = (now, published)
                continue
            elapsed = now - since[0]
            if elapsed >= self.window_s and width and height:
                self.rates[sid] = width * height * (published - since[1]) / elapsed
                self._since[sid] = (now, published)

    def forget(self, sid: str) -> None:
        self.rates.pop(sid, None)
        self._since.pop(sid, None)


def _load(value: float) -> str:
    """A load for the log: ``1.2 Mpx/s`` for pixel rates, a plain count for stream counts."""
    return f"{value / 1e6:.1f} Mpx/s" if value >= 1000 else f"{value:g}"


__all__ = [
    "LoadMeter",
    "Placement",
    "PlacementError",
    "choose",
    "stream_loads",
    "worker_loads",
]
