"""What a model takes and gives, read once from its ONNX graph (nothing is run) and handed to every backend.

`inspect_model` checks the file, the image input and the output layout (`streamer.engine.layout`) and
settles the input size and the largest batch, so that the backends differ only in how they run the model
and a model they cannot run is refused before anything is converted, compiled or built.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from streamer.engine.base import EngineOptions, resolve_input_size
from streamer.engine.device import OutputLayout, TensorSpec
from streamer.engine.layout import (
    ImageInput,
    describe_outputs,
    detect_layout,
    detect_num_classes,
    image_input,
)
from streamer.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    input: ImageInput
    height: int
    width: int
    max_batch: int
    """The config's ``engine.max_batch``; the batch the model was exported with when it fixes one (see
    `any_batch` for a backend that can run such a graph at other sizes)."""
    layout: OutputLayout
    outputs: tuple[TensorSpec, ...]
    """In the order the layout defines (`layout.detect_layout`)."""
    num_classes: int | None
    """From a grid output's last dim or an end-to-end graph's scores, when the graph says; else None."""

    @property
    def dynamic_batch(self) -> bool:
        return self.input.batch is None

    def any_batch(self, max_batch: int) -> ModelInfo:
        """This model at up to `max_batch`, for a backend that rewrites a fixed batch away (torch, CUDA)."""
        return replace(self, max_batch=max_batch)

    def warn_if_batch_fixed(self, options: EngineOptions) -> None:
        """Log that the config's max_batch does not apply (for backends that run the graph as exported)."""
        if self.input.batch is not None and self.input.batch != options.max_batch:
            log.warning(
                "%s was exported with a fixed batch of %d: batches run at %d (engine.max_batch %d does not "
                "apply; export with --dynamic-batch to choose)",
                self.path.name, self.input.batch, self.input.batch, options.max_batch,
            )  # fmt: skip

    def require_grid(self, backend: str) -> TensorSpec:
        """The grid output, or a `ModelError` saying that `backend` runs only the ``--grid`` layout."""
        if self.layout is not OutputLayout.GRID:
            raise ModelError(
                f"{self.path}: the {backend} backend runs yolov7's --grid export (one "
                f"[batch, boxes, 5 + classes] output, NMS by yolostream); this model has the "
                f"{self.layout.value} layout ({describe_outputs_short(self.outputs)}): use engine.backend "
                "tensorrt, or export with --grid"
            )
        return self.outputs[0]


def describe_outputs_short(specs: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{s.name} {list(s.shape)} {s.dtype}" for s in specs)


def inspect_model(path: Path, options: EngineOptions) -> ModelInfo:
    """Read `path`'s graph (without external weight files) and check it against `options`."""
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a truncated or non-ONNX file: protobuf raises its own errors
        raise ModelError(f"cannot read ONNX model {path}: {exc}") from exc
    inp = image_input(proto)
    layout, outputs = detect_layout(proto)
    height, width = resolve_input_size(path, (inp.height, inp.width), options)
    max_batch = inp.batch or options.max_batch
    if layout is OutputLayout.GRID:
        per_box = outputs[0].shape[2]
        num_classes = per_box - 5 if per_box > 0 else None
    else:
        num_classes = detect_num_classes(proto)
    log.info(
        "%s: input %s %dx%d, batch %s, %s layout; outputs %s",
        path.name, inp.name, width, height, inp.batch or "dynamic", layout.value, describe_outputs(proto),
    )  # fmt: skip
    return ModelInfo(path, inp, height, width, max_batch, layout, outputs, num_classes)
