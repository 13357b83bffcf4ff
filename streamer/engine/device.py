"""The interface of engines that run on CUDA streams with buffers they do not own (TensorRT, torch).

The CUDA executor owns everything a batch needs besides the model: per in-flight slot, a CUDA stream,
a device input buffer, device output buffers, pinned host copies of the outputs and timing events. A
`DeviceEngine` only (1) says what tensors it takes and gives, (2) makes one execution context per slot,
and (3) enqueues one inference on a given stream, reading and writing the executor's buffers by
address. So the double-buffered overlap is the same code whichever engine runs, and a backend is only
its engine calls. Everything here is plain Python: no CUDA package is imported.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from streamer.engine.base import ModelSpec


class OutputLayout(str, Enum):
    """The three output layouts of yolov7's ``export.py``; see `streamer.engine.layout`."""

    GRID = "grid"
    """``--grid``: ``output [B, N, 5 + classes]`` raw boxes; yolostream runs NMS
    (`streamer.postprocess.nms`)."""
    EFFICIENT_NMS = "efficient_nms"
    """``--end2end`` for TensorRT: ``num_dets [B,1], det_boxes [B,K,4], det_scores [B,K], det_classes [B,K]``
    from the EfficientNMS_TRT plugin (NMS inside the engine, thresholds baked in at export)."""
    ONNX_NMS = "onnx_nms"
    """``--end2end --max-wh``: ``output [M, 7]`` = batch index, x1, y1, x2, y2, class, score from ONNX
    NonMaxSuppression (thresholds baked in at export)."""


@dataclass(frozen=True)
class TensorSpec:
    """A named engine tensor: dtype name (``float32``, ``float16``, ``int32``, ``int64``) and shape, with
    ``-1`` for the batch dimension (or for the detection count of the ONNX-NMS layout)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def shape_for(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == -1 else d for d in self.shape)


class DeviceEngine(ABC):
    """A model run asynchronously on CUDA streams; buffers belong to the caller (the executor)."""

    name: str
    spec: ModelSpec
    layout: OutputLayout
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]

    @abstractmethod
    def new_context(self) -> object:
        """Per-slot execution state (TensorRT: an ``IExecutionContext``); one per executor slot."""

    def bind(self, context: object, input_ptr: int, output_ptrs: Mapping[str, int]) -> None:  # noqa: B027
        """Called once per slot with the buffers it will always be given (e.g. to capture CUDA graphs)."""

    @abstractmethod
    def enqueue(
        self, context: object, batch: int, input_ptr: int, output_ptrs: Mapping[str, int], stream: int
    ) -> None:
        """Enqueue inference of `batch` images on CUDA `stream` (a ``cudaStream_t`` as an int).

        `input_ptr` points at ``input.shape_for(batch)`` elements of ``input.dtype``; `output_ptrs` maps
        each output name to a buffer sized for the engine's largest batch. Must not synchronise.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources (contexts first, then the engine)."""
