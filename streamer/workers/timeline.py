"""A per-batch timeline of the inference worker, for finding what sets the pace (a developer's tool).

When ``$YOLOSTREAM_TIMELINE`` names a file, the inference worker appends one JSON object per line:

- per batch (``"kind": "batch"``): its size and slot; when its frames arrived (oldest, newest); when the
  batch was formed, filled (letterbox launched or done) and submitted; on the GPU (CUDA executor) when the
  input copy, the engine and the output copy ran (CUDA events); when the executor saw it finish, when
  its outputs were decoded (NMS) and when its last message was published — all in seconds on the
  worker's ``perf_counter`` clock — and the oldest frame's capture time and the publish time (Unix time);
- every 2 s (``"kind": "loop"``): how the loop's thread spent its time: waiting in poll, taking
  notifications, post-processing and publishing, forming and submitting batches, and the rest.

`benchmarks/gpu_live.py` summarises it. Off (None) unless the variable is set: nothing is timed then.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

TIMELINE_ENV = "YOLOSTREAM_TIMELINE"
PHASES = ("poll", "accept", "collect", "dispatch", "other")


class Timeline:
    def __init__(self, path: Path, executor: Any) -> None:
        self._file: IO[str] = path.open("a", buffering=1 << 16)
        self._executor = executor
        if hasattr(executor, "timeline"):
            executor.timeline = []  # the CUDA executor appends each batch's GPU event times
        self._pending: dict[int, dict[str, Any]] = {}
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.turns = 0
        self._flushed = time.perf_counter()

    @classmethod
    def from_env(cls, executor: Any) -> Timeline | None:
        path = os.environ.get(TIMELINE_ENV)
        return cls(Path(path), executor) if path else None

    def submitted(self, batch: Any, items: Sequence[Any], formed: float, filled: float) -> None:
        arrivals = [item.arrived for item in items]
        self._pending[id(batch)] = {
            "kind": "batch", "slot": batch.slot, "n": len(items),
            "arrived_first": min(arrivals), "arrived_last": max(arrivals),
            "formed": formed, "filled": filled, "submitted": batch.submitted,
            "capture_oldest": min(item.note.capture_time for item in items),
        }  # fmt: skip

    def published(self, batch: Any, decoded: float, published: float) -> None:
        record = self._pending.pop(id(batch), None)
        if record is None:
            return
        record.update(finished=batch.finished, decoded=decoded, published=published, publish_wall=time.time())
        gpu = getattr(self._executor, "timeline", None)
        if gpu:
            times = gpu.pop()
            gpu.clear()
            record.update(
                {k: times[k] for k in ("launched", "copy_in", "infer_start", "infer_end", "copy_out_end")}
            )
        self._file.write(json.dumps(record) + "\n")

    def spent(self, phase: str, seconds: float) -> None:
        self.phases[phase] += seconds

    def turn(self, now: float) -> None:
        self.turns += 1
        if now - self._flushed >= 2.0:
            self._file.write(
                json.dumps(
                    {"kind": "loop", "seconds": now - self._flushed, "turns": self.turns, **self.phases}
                )
                + "\n"
            )
            self.phases = dict.fromkeys(PHASES, 0.0)
            self.turns = 0
            self._flushed = now

    def close(self) -> None:
        self._file.close()
