"""The engine interface: a model that turns a preprocessed batch into raw YOLO outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


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

    @property
    def num_classes(self) -> int:
        return self.outputs_per_box - 5


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
