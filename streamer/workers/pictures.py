"""The inference worker's side of the streams' pictures (`streamer.observability.picture`): which streams
someone is looking at, one frame copied out of its ring slot now and then, written with its detections by a
thread.

While nobody looks, a frame costs one set lookup in `HostFrames.fill` and one dict lookup after its
detections are published. While a stream is looked at, one frame of it every 1 / `FPS` s is copied (a
1080p frame: about 1 ms) and the file is written off the loop's thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamer.messages import FrameReady
from streamer.observability.picture import FPS, Box, PictureHeader, Shape, wanted, write_picture

if TYPE_CHECKING:
    from collections.abc import Sequence

    from streamer.config import Config
    from streamer.workers.analysis import Analysis

log = logging.getLogger(__name__)

CHECK_S = 0.25
"""How often the worker looks for requests."""


class Pictures:
    """Copies frames of the streams asked for and writes their pictures (a thread of its own)."""

    def __init__(self, directory: Path, cfg: Config, names: Sequence[str], analysis: Analysis | None) -> None:
        self.directory = directory
        self._sources = {s.id: s for s in cfg.sources}
        self._names = names
        self._analysis = analysis
        self._wanted: frozenset[str] = frozenset()
        self._checked = 0.0
        self._taken: dict[str, float] = {}
        self._kept: dict[str, tuple[FrameReady, np.ndarray]] = {}
        self._queue: queue.Queue[tuple[PictureHeader, np.ndarray] | None] = queue.Queue(maxsize=2)
        self._thread: threading.Thread | None = None

    def tick(self, now: float) -> None:
        """Look for requests (at most every `CHECK_S` seconds of `now`, a monotonic time)."""
        if now - self._checked >= CHECK_S:
            self._checked = now
            self._wanted = frozenset(wanted(self.directory))

    def want(self, note: FrameReady) -> bool:
        """Whether to copy this frame (its stream is looked at, and its last picture is old enough)."""
        if note.stream not in self._wanted:
            return False
        # (A frame kept before and not published yet is replaced: at this rate, it was lost.)
        return time.monotonic() - self._taken.get(note.stream, 0.0) >= 1 / FPS

    def keep(self, note: FrameReady, rgb: np.ndarray) -> None:
        """A copy of `note`'s pixels, read whole from its ring slot."""
        self._taken[note.stream] = time.monotonic()
        self._kept[note.stream] = (note, rgb)

    def published(self, note: FrameReady, dets: np.ndarray, track_ids: np.ndarray | None) -> None:
        """`note`'s detections went out (``[K, 6]`` source pixels): write its picture if it was kept."""
        kept = self._kept.get(note.stream)
        if kept is None or kept[0] is not note:
            return
        del self._kept[note.stream]
        ids = [None] * len(dets) if track_ids is None else [int(t) if t > 0 else None for t in track_ids]
        boxes = [
            Box(d[0], d[1], d[2], d[3], round(d[4], 4), self._name(int(d[5])), t)
            for d, t in zip(dets.tolist(), ids, strict=True)
        ]
        header = PictureHeader(
            stream=note.stream, frame=note.index, pts=note.pts, capture_ts=note.capture_time,
            width=note.width, height=note.height, boxes=boxes, shapes=self._shapes(note),
        )  # fmt: skip
        if self._thread is None:
            self._thread = threading.Thread(target=self._write, name="pictures", daemon=True)
            self._thread.start()
        with contextlib.suppress(queue.Full):  # (the writer is behind: skip this one)
            self._queue.put_nowait((header, kept[1]))

    def _name(self, class_id: int) -> str:
        return self._names[class_id] if 0 <= class_id < len(self._names) else str(class_id)

    def _shapes(self, note: FrameReady) -> list[Shape]:
        """The stream's zones and lines in pixels, each labelled with its counts where they are known."""
        source = self._sources.get(note.stream)
        if source is None:
            return []
        per_stream = self._analysis.get(note.stream) if self._analysis is not None else None
        counter = per_stream.zones if per_stream is not None else None
        size = np.array([note.width, note.height], dtype=np.float64)
        shapes = []
        for zone in source.zones:
            xy = np.asarray(zone.polygon, dtype=np.float64) * (size if zone.coords == "normalized" else 1.0)
            label = ""
            if counter is not None:
                label = f"{sum(counter.occupancy.get(zone.name, {}).values())} inside"
            shapes.append(Shape("zone", zone.name, [(float(x), float(y)) for x, y in xy], label))
        for line in source.lines:
            xy = np.asarray(line.points, dtype=np.float64) * (size if line.coords == "normalized" else 1.0)
            label = ""
            if counter is not None:
                c = counter.counts.get(line.name, {})
                label = f"in {c.get('in', 0)} out {c.get('out', 0)}"
            shapes.append(Shape("line", line.name, [(float(x), float(y)) for x, y in xy], label))
        return shapes

    def _write(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                write_picture(self.directory, *item)
            except OSError as exc:  # (the run directory is going away)
                log.debug("picture of %s not written: %s", item[0].stream, exc)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)
            self._thread = None


__all__ = ["Pictures"]
