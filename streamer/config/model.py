"""Config sections of the model and the engine: `ModelConfig`, `EngineConfig` (with `worker_names`, the
inference workers' names for ``engine.devices``), `DetectionConfig`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streamer.coco import COCO_CLASSES
from streamer.config.base import Section, describe, fail, resolved

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _input_size(value: Any) -> Any:
    """`640` → ``(640, 640)``; ``[384, 640]`` → ``(384, 640)``; each side a positive multiple of 32."""
    if value is None:
        return None
    sides = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(sides, (list, tuple)) or len(sides) != 2:
        raise ValueError(f"must be a size like 640 or [height, width], got {describe(value)}")
    for side in sides:
        if not isinstance(side, int) or isinstance(side, bool) or side <= 0 or side % 32:
            raise ValueError(
                f"each side must be a positive multiple of 32 (YOLOv7's stride), got {describe(side)}"
            )
    return tuple(sides)


class ModelConfig(Section):
    """The YOLOv7 detector: which model file, its input size and class names."""

    onnx: Path | None = Field(
        default=None,
        description="Path to the YOLOv7 ONNX file (relative paths are relative to the config file).",
    )
    name: str | None = Field(
        default=None,
        description="A named model (yolov7-coco), fetched and converted on first use and cached; "
        "give either name or onnx.",
    )
    input_size: Annotated[
        tuple[int, int] | None,
        BeforeValidator(_input_size, json_schema_input_type=int | tuple[int, int] | None),
    ] = Field(
        default=None,
        description="Network input as (height, width), multiples of 32; an int means a square. "
        "None reads it from the model at run time.",
    )
    class_names: tuple[str, ...] | None = Field(
        default=None,
        min_length=1,
        description="Names of the model's classes in index order; None means COCO's 80.",
    )
    channel_order: Literal["rgb", "bgr"] = Field(
        default="rgb", description="The channel order the model expects."
    )

    @property
    def effective_class_names(self) -> tuple[str, ...]:
        """`class_names`, or the 80 COCO names when it is not given."""
        return self.class_names if self.class_names is not None else COCO_CLASSES

    @field_validator("onnx")
    @classmethod
    def _resolve(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolved(value, info)

    @model_validator(mode="after")
    def _one_model(self) -> ModelConfig:
        from streamer.models.registry import MODELS  # (a name check only: fetching is the worker's job)

        if self.name is not None and self.onnx is not None:
            fail((("name",), "give either model.name or model.onnx, not both"))
        if self.name is not None and self.name not in MODELS:
            fail((("name",), f"unknown model name {self.name!r}; known: {', '.join(sorted(MODELS))}"))
        if self.name is None and self.onnx is None:
            fail(
                (
                    (),
                    "missing model: give model.name (e.g. yolov7-coco) or model.onnx (a path to an ONNX file)",  # noqa: E501
                )
            )
        return self


# --------------------------------------------------------------------------------------------------- engine


def _on_off(value: Any) -> Any:
    # YAML 1.1 reads an unquoted on/off as a boolean
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def _devices(value: Any) -> Any:
    """``[0, 'cuda:1', 'cpu']`` → ``('cuda:0', 'cuda:1', 'cpu')``; ``all`` and None as they are."""
    if value is None or value == "all":
        return value
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"must be a list of GPU indices or cpu entries, or all, got {describe(value)}")
    devices = []
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            devices.append(f"cuda:{item}")
        elif isinstance(item, str) and re.fullmatch(r"cpu|cuda:[0-9]+", item.strip().lower()):
            devices.append(item.strip().lower())
        else:
            raise ValueError(
                f"each entry must be a GPU index (0, 1, ...), cuda:N or cpu, got {describe(item)}"
            )
    gpus = [d for d in devices if d != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"lists a GPU twice ({', '.join(gpus)}): one inference worker per GPU")
    return tuple(devices)


def worker_names(devices: Sequence[str]) -> list[str]:
    """The inference workers' names for normalised devices: ``cuda:1`` → ``gpu1``, the K-th ``cpu`` →
    ``cpuK``."""
    names, cpus = [], 0
    for device in devices:
        if device == "cpu":
            names.append(f"cpu{cpus}")
            cpus += 1
        else:
            names.append(f"gpu{device.partition(':')[2] or '0'}")
    return names


class EngineConfig(Section):
    """How inference runs: backend, device, precision and batching."""

    backend: Literal["auto", "onnxruntime", "torch", "tensorrt"] = Field(
        default="auto", description="Inference backend; auto picks the best one installed for the device."
    )
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N.")
    devices: Annotated[
        tuple[str, ...] | Literal["all"] | None,
        BeforeValidator(_devices, json_schema_input_type=list[int | str] | Literal["all"] | None),
    ] = Field(
        default=None,
        description="One inference worker per entry: GPU indices ([0, 1]), all (every GPU of the host), "
        "or cpu entries ([cpu, cpu]); each stream is placed on one worker (docs/multigpu.md). None: one "
        "worker on device.",
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(
        default="fp32",
        description="Numeric precision of inference: fp16 for TensorRT and torch on CUDA, int8 for TensorRT "
        "(with calibration_images); ONNX Runtime runs the model as exported.",
    )
    max_batch: StrictInt = Field(
        default=4, ge=1, le=256, description="Most frames (from any streams) in one batch."
    )
    batch_timeout_ms: StrictFloat = Field(
        default=10.0, ge=0, description="How long a partial batch waits for more frames before it runs."
    )
    threads: StrictInt | None = Field(
        default=None, ge=1, description="CPU inference threads; None lets the backend choose."
    )
    inflight: StrictInt = Field(
        default=2, ge=1, le=8, description="Batches submitted to the device and not yet collected."
    )
    concurrent_batches: StrictBool = Field(
        default=False,
        description="On the GPU: let the in-flight batches run on the engine at the same time instead of one "
        "after another (their copies, filters and letterbox kernels overlap the engine either way).",
    )
    compile: Annotated[
        Literal["auto", "on", "off"],
        BeforeValidator(_on_off, json_schema_input_type=Literal["auto", "on", "off"] | bool),
    ] = Field(
        default="auto",
        description="torch on CUDA: compile the model with torch.compile (inductor) for each batch size; "
        "auto falls back to eager (with a log line saying why) where compiling fails, on makes that an "
        "error. "
        "Compiled kernels are cached under the yolostream cache directory; `yolostream build` warms it.",
    )
    batch_sizes: tuple[StrictInt, ...] | None = Field(
        default=None,
        min_length=1,
        description="torch on CUDA: the batch sizes the engine is built for (a batch runs at the smallest "
        "one that holds it); None: 1, 2, 4, ... up to max_batch, and max_batch.",
    )
    cuda_graphs: StrictBool = Field(
        default=True,
        description="torch on CUDA: replay each batch size as a CUDA graph (one launch per batch).",
    )
    workspace_mb: StrictInt | None = Field(
        default=None, ge=1, description="TensorRT: builder workspace limit in MiB; None: TensorRT's default."
    )
    opt_batch: StrictInt | None = Field(
        default=None, ge=1, description="TensorRT: the batch the engine is tuned for; None: max_batch."
    )
    calibration_images: Path | None = Field(
        default=None,
        description="TensorRT int8: a folder of representative images for calibration (relative to the "
        "config file).",
    )

    @field_validator("calibration_images")
    @classmethod
    def _resolve_calibration(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolved(value, info)

    @model_validator(mode="after")
    def _sizes_within_max_batch(self) -> EngineConfig:
        for i, size in enumerate(self.batch_sizes or ()):
            if not 1 <= size <= self.max_batch:
                fail((("batch_sizes", i), f"must be between 1 and max_batch ({self.max_batch}), got {size}"))
        return self

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            if not _DEVICE.fullmatch(value):
                raise ValueError(f"must be auto, cpu, cuda or cuda:N (e.g. cuda:0), got {value!r}")
        return value


# ------------------------------------------------------------------------------------------------ detection


def _class_item(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be a class id (an integer) or a class name, got {describe(value)}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"a class id must be >= 0, got {value}")
    if isinstance(value, str) and not value.strip():
        raise ValueError("a class name must not be empty")
    return value


class DetectionConfig(Section):
    """Which detections are kept: thresholds, classes and NMS."""

    confidence: StrictFloat = Field(default=0.25, gt=0, le=1, description="Minimum score of a detection.")
    iou: StrictFloat = Field(
        default=0.45, gt=0, le=1, description="IoU above which NMS suppresses the weaker box."
    )
    max_detections: StrictInt = Field(default=300, ge=1, description="Most detections kept per frame.")
    classes: tuple[Annotated[int | str, BeforeValidator(_class_item)], ...] | None = Field(
        default=None,
        min_length=1,
        description="Class ids or names to keep; None keeps all. Names are turned into ids when the config "
        "is validated, so on a validated Config these are ints.",
    )
    agnostic_nms: StrictBool = Field(
        default=False, description="Run NMS across classes instead of per class."
    )
    multi_label: StrictBool = Field(
        default=False, description="Allow several classes per box (each above confidence)."
    )

    @property
    def class_ids(self) -> tuple[int, ...] | None:
        """The class ids to keep (None: all). Only meaningful on a validated `Config`."""
        if self.classes is None:
            return None
        return tuple(c for c in self.classes if isinstance(c, int))
