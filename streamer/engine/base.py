"""The engine interface: a model that turns a preprocessed batch into raw YOLO outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamer.errors import ModelError


@dataclass(frozen=True)
class EngineOptions:
    """What the config says about how to run the model."""

    device: str = "auto"
    precision: str = "fp32"
    max_batch: int = 4
    threads: int | None = None
    input_size: tuple[int, int] | None = None
    """(height, width) asked for by the config; None: read it from the model."""


@dataclass(frozen=True)
class ModelSpec:
    """What the loaded model takes and gives."""

    input_name: str
    height: int
    width: int
    max_batch: int
    """The largest batch the engine accepts (the config's, or 1 for a model exported with batch 1)."""
    outputs_per_box: int
    """5 + number of classes (the YOLOv7 ``--grid`` layout: cx, cy, w, h, objectness, class scores)."""
    boxes: int
    """Rows per image in the raw output (25200 for YOLOv7 at 640)."""
    fixed_batch: bool = False
    """The engine runs only batches of `max_batch` (a graph exported with a fixed batch): pad to it."""

    @property
    def num_classes(self) -> int:
        return self.outputs_per_box - 5


DEFAULT_INPUT = 640


def batch_sizes(max_batch: int, sizes: Sequence[int] | None = None) -> tuple[int, ...]:
    """The batch sizes an engine is built for, ascending: `sizes` (capped at `max_batch`), else 1, 4, 16,
    64, ... below `max_batch`, and `max_batch` itself. A batch of n runs at the smallest size >= n.

    Powers of 4: each size is a compile of its own (about 20 s cold, 7 s warm for YOLOv7 on an H200), and a
    batch padded to the next power of 4 costs little more than an exact one (batch 4 runs in 2.7 ms, 1 in
    1.4 ms, 16 in 8.1 ms there).
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    wanted = sizes if sizes else [4**k for k in range(max_batch.bit_length()) if 4**k < max_batch]
    return tuple(sorted({s for s in wanted if 1 <= s < max_batch} | {max_batch}))


def resolve_input_size(
    model: Path, model_hw: tuple[int | None, int | None], options: EngineOptions
) -> tuple[int, int]:
    """(height, width) to run `model` at: the config's, checked against the model's static dims (None:
    dynamic), else the model's, else `DEFAULT_INPUT`. Raises ModelError on a conflict, naming the axis."""
    if options.input_size is None:
        return model_hw[0] or DEFAULT_INPUT, model_hw[1] or DEFAULT_INPUT
    for want, have, axis in zip(options.input_size, model_hw, ("height", "width"), strict=True):
        if have is not None and have != want:
            raise ModelError(
                f"{model}: the model's input {axis} is {have}, "
                f"but the config's model.input_size asks for {want}"
            )
    return options.input_size


class Engine(ABC):
    """A loaded model. `infer` is synchronous and thread-safe for one caller at a time."""

    name: str
    spec: ModelSpec

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """``[n, 3, H, W]`` float32 (n ≤ spec.max_batch) → raw outputs ``[n, boxes, outputs_per_box]``."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
