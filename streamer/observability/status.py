"""The pipeline's state, written by the inference worker for the supervisor (systemd STATUS, watchdog,
metrics, `yolostream status`): a small JSON file in the run directory, replaced atomically every second.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import msgspec

# What the inference worker last heard of a stream, from its events (see streamer.messages).
STATE_OF_EVENT = {
    "started": "running",
    "up": "running",
    "reconnecting": "reconnecting",
    "down": "down",
    "frozen": "frozen",
    "eos": "ended",
    "error": "failed",
}


class StreamStatus(msgspec.Struct):
    state: str = "starting"
    published: int = 0
    dropped: int = 0
    last_frame_time: float = 0.0
    """Unix time at which the stream's last frame was published (0: none yet)."""
    decoder: str = ""
    """``cpu`` or ``nvdec``: the decoder of the stream's last ``started`` event, or ``cpu`` after a
    ``fallback`` ("" until the stream started)."""
    width: int = 0
    height: int = 0
    """The size of the stream's last frame (0: none yet): its load, for placement
    (`streamer.daemon.placement`)."""


class RunStatus(msgspec.Struct):
    time: float = 0.0
    """When the inference worker wrote this (Unix time): a stale file means a stuck worker."""
    published: int = 0
    batches: int = 0
    streams: dict[str, StreamStatus] = msgspec.field(default_factory=dict)
    subscriptions: int = 0
    """Active subscriptions to the publisher (a replacement inference worker waits for as many)."""

    def summary(self) -> str:
        """One line for systemd's STATUS=, e.g. ``3 streams: 2 running, 1 down; 1520 frames published``."""
        counts: dict[str, int] = {}
        for s in self.streams.values():
            counts[s.state] = counts.get(s.state, 0) + 1
        states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return f"{len(self.streams)} stream(s): {states or 'none yet'}; {self.published} frames published"


def merge_statuses(statuses: list[RunStatus | None]) -> RunStatus | None:
    """One status of several inference workers' (``engine.devices``): their streams and totals; the
    oldest time (one stuck worker makes the whole look stuck); None while one has written none."""
    if not statuses or any(s is None for s in statuses):
        return None
    known = [s for s in statuses if s is not None]
    if len(known) == 1:
        return known[0]
    merged = RunStatus(time=min(s.time for s in known), subscriptions=max(s.subscriptions for s in known))
    for s in known:
        merged.published += s.published
        merged.batches += s.batches
        merged.streams.update(s.streams)
    return merged


def decoder_after(event: Any, decoder: str) -> str:
    """The stream's decoder once `event` (a `StreamEvent`) is known: what it says, else `decoder`."""
    if event.kind == "fallback":
        return str(event.detail.get("to", "cpu"))
    return str(event.detail.get("decoder", decoder)) if event.kind == "started" else decoder


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RunStatus)


def write_status(path: Path, status: RunStatus) -> None:
    status.time = time.time()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(_encoder.encode(status))
    os.replace(tmp, path)


def read_status(path: Path) -> RunStatus | None:
    try:
        return _decoder.decode(path.read_bytes())
    except (OSError, msgspec.DecodeError):
        return None


__all__ = [
    "STATE_OF_EVENT",
    "RunStatus",
    "StreamStatus",
    "decoder_after",
    "merge_statuses",
    "read_status",
    "write_status",
]
