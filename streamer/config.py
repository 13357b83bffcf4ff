"""The daemon's configuration: one YAML file, validated into frozen pydantic models, one class per section.

`load_config` / `parse_config` return a `Config` or raise `ConfigError` listing *every* problem found,
each with its key path (``sources[1].fps_limit``) and YAML line. Validation does no I/O: files are not
checked for existence and devices are not probed (the workers do that, with errors that name the stream).
Relative paths are resolved against the config file's directory. See docs/config.md for every key.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import unquote, urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streamer.coco import COCO_CLASSES
from streamer.config_analytics import LineConfig, TrackingConfig, TrackingOverrides, ZoneConfig
from streamer.config_base import Section as _Section
from streamer.config_base import fail as _fail
from streamer.errors import ConfigError, ConfigProblem
from streamer.yamlfile import KeyPath, data_path, format_key, load_yaml

__all__ = [
    "Config",
    "CurveConfig",
    "DetectionConfig",
    "EngineConfig",
    "FleetConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "PublishConfig",
    "ReconnectConfig",
    "SourceConfig",
    "TrackingConfig",
    "load_config",
    "parse_config",
    "redact_url",
]

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https", "rtmp"})
"""URL schemes of network streams; anything else must be a local file (a path or a ``file:`` URL)."""
ENDPOINT_PREFIXES = ("tcp://", "ipc://", "inproc://")
MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused before it is parsed."""
_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
_SECRET_QUERY = re.compile(r"(?i)([?&][^=&#]*(?:pass|pwd|token|secret|key|auth|sig)[^=&#]*=)[^&#]*")


# ---------------------------------------------------------------------------------------------------- model


def _input_size(value: Any) -> Any:
    """`640` → ``(640, 640)``; ``[384, 640]`` → ``(384, 640)``; each side a positive multiple of 32."""
    if value is None:
        return None
    sides = [value, value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(sides, (list, tuple)) or len(sides) != 2:
        raise ValueError(f"must be a size like 640 or [height, width], got {_describe(value)}")
    for side in sides:
        if not isinstance(side, int) or isinstance(side, bool) or side <= 0 or side % 32:
            raise ValueError(
                f"each side must be a positive multiple of 32 (YOLOv7's stride), got {_describe(side)}"
            )
    return tuple(sides)


class ModelConfig(_Section):
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
        if value is None or value.is_absolute():
            return value
        return _base_dir(info) / value

    @model_validator(mode="after")
    def _one_model(self) -> ModelConfig:
        from streamer.models.registry import MODELS  # (a name check only: fetching is the worker's job)

        if self.name is not None and self.onnx is not None:
            _fail((("name",), "give either model.name or model.onnx, not both"))
        if self.name is not None and self.name not in MODELS:
            _fail((("name",), f"unknown model name {self.name!r}; known: {', '.join(sorted(MODELS))}"))
        if self.name is None and self.onnx is None:
            _fail(
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
        raise ValueError(f"must be a list of GPU indices or cpu entries, or all, got {_describe(value)}")
    devices = []
    for item in value:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            devices.append(f"cuda:{item}")
        elif isinstance(item, str) and re.fullmatch(r"cpu|cuda:[0-9]+", item.strip().lower()):
            devices.append(item.strip().lower())
        else:
            raise ValueError(
                f"each entry must be a GPU index (0, 1, ...), cuda:N or cpu, got {_describe(item)}"
            )
    gpus = [d for d in devices if d != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"lists a GPU twice ({', '.join(gpus)}): one inference worker per GPU")
    return tuple(devices)


def _source_device(value: Any) -> Any:
    """A stream's ``device``: ``1`` or ``cuda:1`` → ``gpu1``; ``gpuN`` and ``cpuK`` as they are."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return f"gpu{value}"
    if isinstance(value, str):
        text = value.strip().lower()
        if m := re.fullmatch(r"cuda:([0-9]+)", text):
            return f"gpu{m.group(1)}"
        if re.fullmatch(r"(gpu|cpu)[0-9]+", text):
            return text
    raise ValueError(
        f"must name an inference worker: a GPU index (0), cuda:N, gpuN or cpuK (the K-th cpu entry of "
        f"engine.devices), got {_describe(value)}"
    )


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


class EngineConfig(_Section):
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
        if value is None or value.is_absolute():
            return value
        return _base_dir(info) / value

    @model_validator(mode="after")
    def _sizes_within_max_batch(self) -> EngineConfig:
        for i, size in enumerate(self.batch_sizes or ()):
            if not 1 <= size <= self.max_batch:
                _fail((("batch_sizes", i), f"must be between 1 and max_batch ({self.max_batch}), got {size}"))
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
        raise ValueError(f"must be a class id (an integer) or a class name, got {_describe(value)}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"a class id must be >= 0, got {value}")
    if isinstance(value, str) and not value.strip():
        raise ValueError("a class name must not be empty")
    return value


class DetectionConfig(_Section):
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


# -------------------------------------------------------------------------------------------------- sources


def redact_url(url: str) -> str:
    """`url` with its password (and secret-looking query values) replaced by ``***``, for logs."""
    scheme, sep, rest = url.partition("://")
    if sep:
        at = rest.rfind("@")  # the last '@': a password may itself contain '@', '/' or ':'
        user, colon, _ = rest[:at].partition(":") if at >= 0 else ("", "", "")
        if colon and "/" not in user:
            rest = f"{user}:***{rest[at:]}"
        url = f"{scheme}{sep}{rest}"
    return _SECRET_QUERY.sub(r"\1***", url)


def _url_port(url: str) -> str | None:
    """The port as written in a URL's authority, or None. The host starts after the last '@' (as in
    `redact_url`: a password may hold '@', '/' or ':'), and ends at the first '/', '?' or '#' after it."""
    rest = url.partition("://")[2]
    at = rest.rfind("@")
    host = re.split(r"[/?#]", rest[at + 1 :], maxsplit=1)[0]
    if host.startswith("["):  # [IPv6]:port
        host = host.partition("]")[2]
    return host.rpartition(":")[2] if ":" in host else None


def _scheme(url: str) -> str:
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    return match.group(1).lower() if match else ""


class ReconnectConfig(_Section):
    """How a live stream is retried after it failed: exponential backoff with jitter, then a slow rate."""

    initial_s: StrictFloat = Field(default=1.0, gt=0, description="Delay before the first retry.")
    max_s: StrictFloat = Field(default=30.0, gt=0, description="Longest delay while backing off.")
    multiplier: StrictFloat = Field(default=2.0, ge=1, description="Each delay is the last one times this.")
    jitter: StrictFloat = Field(
        default=0.2, ge=0, lt=1, description="Each delay is randomised by up to ± this fraction."
    )
    down_after: StrictInt = Field(
        default=5, ge=1, description="Failures in a row after which the stream is reported down."
    )
    down_retry_s: StrictFloat = Field(default=60.0, gt=0, description="Delay between retries once down.")

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectConfig:
        if self.max_s < self.initial_s:
            _fail((("max_s",), f"must be >= initial_s ({self.initial_s:g}), got {self.max_s:g}"))
        return self


class SourceConfig(_Section):
    """One video stream: a camera URL or a file."""

    id: str = Field(
        min_length=1,
        max_length=64,
        description="Unique name of the stream, used as the ZeroMQ topic: letters, digits, '_' and '-'.",
    )
    url: str = Field(
        repr=False,  # may hold a password: use display_url in logs
        description="rtsp(s)://, http(s):// or rtmp:// URL, a file path / file: URL, or sample:demo. "
        "A file is "
        "normalised to an absolute path, relative to the config file.",
    )
    decoder: Literal["auto", "cpu", "nvdec"] = Field(
        default="auto",
        description="Video decoder: cpu, nvdec (GPU), or auto (nvdec where a GPU and PyNvVideoCodec are "
        "present); a stream NVDEC cannot decode falls back to the CPU decoder.",
    )
    fps_limit: StrictFloat | None = Field(
        default=None, gt=0, description="Most frames per second sent to the detector."
    )
    loop: StrictBool = Field(default=False, description="Restart a file at its end (files only).")
    realtime: StrictBool | None = Field(
        default=None,
        description="Pace frames at the stream's own rate; None: true for live URLs, false for files.",
    )
    ring_slots: StrictInt = Field(
        default=4, ge=2, le=64, description="Frame slots of the stream's shared-memory ring."
    )
    transport: Literal["auto", "tcp", "udp"] = Field(
        default="auto",
        description="RTSP only: carry the media over the RTSP connection (tcp), over UDP (udp), or over "
        "TCP unless the server refuses it, then UDP (auto).",
    )
    open_timeout_s: StrictFloat = Field(
        default=10.0, gt=0, description="Give up connecting (and probing the stream) after this long."
    )
    read_timeout_s: StrictFloat = Field(
        default=5.0, gt=0, description="A live stream that delivers nothing for this long has stalled."
    )
    reconnect: ReconnectConfig = Field(
        default_factory=ReconnectConfig, description="Live streams: retrying after a failure."
    )
    frozen_after_s: StrictFloat | None = Field(
        default=None,
        gt=0,
        description="Live streams: the same picture for this long means a frozen camera (reconnect); "
        "None: off.",
    )
    device: Annotated[
        str | None, BeforeValidator(_source_device, json_schema_input_type=int | str | None)
    ] = Field(
        default=None,
        description="With engine.devices: the inference worker that carries this stream (a GPU index, "
        "cuda:N, gpuN or cpuK); None: the least loaded one.",
    )
    tracking: TrackingOverrides = Field(
        default_factory=TrackingOverrides,
        description="This source's tracking settings, over the global tracking section.",
    )
    zones: tuple[ZoneConfig, ...] = Field(
        default=(), description="Polygons of the picture: enter/exit events, occupancy (needs tracking)."
    )
    lines: tuple[LineConfig, ...] = Field(
        default=(), description="Segments of the picture: crossings in and out (needs tracking)."
    )

    @property
    def is_live(self) -> bool:
        """True for a network stream (rtsp, http, rtmp ...), False for a local file."""
        return _scheme(self.url) in LIVE_SCHEMES

    @property
    def paced(self) -> bool:
        """Whether frames are delivered at the stream's rate: `realtime`, defaulting to `is_live`."""
        return self.realtime if self.realtime is not None else self.is_live

    @property
    def display_url(self) -> str:
        """The URL with its password redacted (``rtsp://user:***@host/...``): safe for logs."""
        return redact_url(self.url)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _STREAM_ID.fullmatch(value):
            raise ValueError(
                f"must start with a letter or digit and contain only letters, digits, '_' and '-' "
                f"(it is used as a ZeroMQ topic), got {value!r}"
            )
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        scheme = _scheme(value)
        try:
            parts = urlsplit(value)
        except ValueError as exc:  # e.g. an unclosed '[' of an IPv6 address
            raise ValueError(f"is not a valid URL ({exc}): {redact_url(value)!r}") from None
        if scheme in LIVE_SCHEMES:
            if not parts.hostname:
                raise ValueError(f"has no host: {redact_url(value)!r}")
            port = _url_port(value)
            if port is not None and not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError(f"has a port that is not 1 to 65535 ({port!r}): {redact_url(value)!r}")
            return value
        if scheme == "sample":
            from streamer.samples import SAMPLES  # (a name check only: the clip is made by the worker)

            if parts.path not in SAMPLES:
                raise ValueError(f"unknown sample {parts.path!r}; samples: {', '.join(sorted(SAMPLES))}")
            return value
        if scheme == "file":
            if parts.netloc not in ("", "localhost"):
                raise ValueError(f"a file: URL must name a local file, got host {parts.netloc!r}")
            value = unquote(parts.path)
        elif scheme:
            raise ValueError(
                f"unsupported URL scheme '{scheme}://' in {redact_url(value)!r}; use rtsp://, rtsps://, "
                "http(s)://, rtmp://, sample:<name> or a file path"
            )
        path = Path(value)
        return str(path if path.is_absolute() else _base_dir(info) / path)

    @field_validator("reconnect", mode="before")
    @classmethod
    def _empty_reconnect(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _loop_files_only(self) -> SourceConfig:
        if self.loop and self.is_live:
            _fail((("loop",), "loop is only for files; a live stream cannot be restarted from the beginning"))
        problems: list[tuple[KeyPath, str]] = []
        if not self.is_live:
            problems += [
                ((key,), "only for live streams (rtsp://, http://, ...): a file is not reconnected")
                for key in ("reconnect", "frozen_after_s")
                if key in self.model_fields_set
            ]
        if "transport" in self.model_fields_set and _scheme(self.url) not in ("rtsp", "rtsps"):
            problems.append((("transport",), "only for rtsp:// and rtsps:// URLs"))
        if problems:
            _fail(*problems)
        return self


# ---------------------------------------------------------------------------------------- publish, logging


def _path_list(value: Any) -> Any:
    return [value] if isinstance(value, (str, Path)) else value


class CurveConfig(_Section):
    """ZeroMQ CURVE: encrypt the published messages and admit only subscribers with an authorised key.

    The key files are read when the publisher starts (errors name the file), not when validating.
    """

    server_secret_key_file: Path = Field(
        description="The publisher's secret certificate (server.key_secret from `yolostream keys`)."
    )
    authorized_clients: Annotated[
        tuple[Path, ...], BeforeValidator(_path_list, json_schema_input_type=Path | tuple[Path, ...])
    ] = Field(
        default=(),
        description="Public certificates of the subscribers admitted: directories (every *.key in them) "
        "or files; re-read when they change.",
    )
    allow_any_client: StrictBool = Field(
        default=False, description="Admit any CURVE client (encryption without client authentication)."
    )

    @field_validator("server_secret_key_file", "authorized_clients")
    @classmethod
    def _resolve_keys(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, Path):
            return value if value.is_absolute() else _base_dir(info) / value
        return tuple(p if p.is_absolute() else _base_dir(info) / p for p in value)

    @model_validator(mode="after")
    def _who_is_admitted(self) -> CurveConfig:
        if self.allow_any_client and self.authorized_clients:
            _fail((("allow_any_client",), "give authorized_clients or allow_any_client: true, not both"))
        if not self.allow_any_client and not self.authorized_clients:
            _fail(
                (
                    ("authorized_clients",),
                    "missing: the directory (or files) of the subscribers' public keys, or set "
                    "allow_any_client: true to admit any subscriber that has the server's public key",
                )
            )
        return self


class PublishConfig(_Section):
    """Where and how detections are published over ZeroMQ."""

    endpoint: str = Field(default="tcp://127.0.0.1:5555", description="ZeroMQ endpoint the PUB socket binds.")
    encoding: Literal["json", "msgpack"] = Field(
        default="json", description="Encoding of the message payloads."
    )
    send_hwm: StrictInt = Field(
        default=1000, ge=1, description="Messages queued per subscriber before dropping."
    )
    curve: CurveConfig | None = Field(
        default=None, description="ZeroMQ CURVE encryption and subscriber authentication; None: off."
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith(ENDPOINT_PREFIXES) or value in ENDPOINT_PREFIXES:
            raise ValueError(
                f"must be a ZeroMQ endpoint starting with tcp://, ipc:// or inproc://, got {value!r}"
            )
        if value.startswith("tcp://"):
            port = value.rpartition(":")[2]
            if port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
                raise ValueError(f"a tcp:// endpoint needs a port from 1 to 65535 (or *), got {value!r}")
        return value


class SupervisorConfig(_Section):
    """How crashed workers are restarted, and when healthy ones are recycled."""

    restart_initial_s: StrictFloat = Field(
        default=0.5, gt=0, description="Delay before restarting a worker that crashed; doubles each time."
    )
    restart_max_s: StrictFloat = Field(
        default=30.0, gt=0, description="Longest delay between restarts (and the run time that resets it)."
    )
    max_restarts: StrictInt = Field(
        default=5, ge=1, description="At most this many restarts of one worker within restart_window_s."
    )
    restart_window_s: StrictFloat = Field(default=60.0, gt=0, description="The window of max_restarts.")
    source_rss_limit_mb: StrictInt | None = Field(
        default=None, ge=1, description="Recycle a source worker whose memory (RSS) exceeds this."
    )
    inference_rss_limit_mb: StrictInt | None = Field(
        default=None, ge=1, description="Recycle the inference worker when its memory (RSS) exceeds this."
    )
    nvdec_streams_per_process: StrictInt = Field(
        default=8,
        ge=1,
        le=64,
        description="Streams decoded by NVDEC (decoder nvdec, or auto with an engine on the GPU) share a "
        "source worker process, and its CUDA context, this many at a time; 1: a process per stream.",
    )
    cpu_streams_per_process: StrictInt = Field(
        default=1,
        ge=1,
        le=64,
        description="Streams decoded on the CPU share a source worker process this many at a time; 1 (the "
        "default): a process per stream.",
    )
    heartbeat_timeout_s: StrictFloat = Field(
        default=30.0,
        ge=0,
        description="A worker whose loop has not advanced for this long is stuck: its Python stack is "
        "logged, a stalled event published and the worker restarted; 0 turns the check off. A live "
        "source gets at least its own open/read timeout plus 15 s (its decoder watchdog acts first).",
    )
    heartbeat_startup_s: StrictFloat = Field(
        default=300.0,
        ge=0,
        description="The limit during start-up, at least heartbeat_timeout_s: a worker's until its own code "
        "runs (spawn, imports), the inference worker's from ready until its first batch is published, "
        "when an engine may compile (torch.compile, a TensorRT build).",
    )


class LoggingConfig(_Section):
    """Log level and format, and the periodic statistics line."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Least severe level logged."
    )
    format: Literal["text", "json"] = Field(
        default="text", description="text for people, json (one object a line)."
    )
    stats_interval_s: StrictFloat = Field(
        default=5.0,
        ge=0,
        description="Seconds between the logged fps/latency lines (at least 1); 0 disables them.",
    )

    @field_validator("stats_interval_s")
    @classmethod
    def _sane_interval(cls, value: float) -> float:
        if 0 < value < 1:
            raise ValueError(f"must be 0 (off) or at least 1 second, got {value}")
        return value

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → ``(host, port)``; raises ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"must be HOST:PORT (such as 127.0.0.1:9464 or [::1]:9464), got {value!r}")
    return host, int(port)


class MetricsConfig(_Section):
    """The HTTP endpoint with Prometheus metrics and health checks (docs/metrics.md)."""

    enabled: StrictBool = Field(default=True, description="Serve /metrics, /healthz and /readyz.")
    listen: str | None = Field(
        default="127.0.0.1:9464",
        description="HOST:PORT to listen on (127.0.0.1: this host only; port 0: any free port); null: off.",
    )

    @model_validator(mode="before")
    @classmethod
    def _empty(cls, value: Any) -> Any:
        return {} if value is None else value  # `metrics:` with everything commented out: all defaults

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to listen on, or None when metrics are off."""
        return parse_listen(self.listen) if self.enabled and self.listen is not None else None


# ---------------------------------------------------------------------------------------------------- fleet

_FLEET_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
NATS_SCHEMES = ("nats", "tls")


class FleetTlsConfig(_Section):
    """TLS to the NATS servers: the CA that signs them, and a client certificate where they ask for one."""

    ca_file: Path | None = Field(
        default=None, description="CA certificate(s) (PEM) that the servers' certificates chain to."
    )
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM), with key_file.")
    key_file: Path | None = Field(default=None, description="The client certificate's private key (PEM).")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _resolve_tls(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None or value.is_absolute():
            return value
        return _base_dir(info) / value

    @model_validator(mode="after")
    def _pair(self) -> FleetTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            _fail(((missing,), "cert_file and key_file go together: give both or neither"))
        return self


class FleetConfig(_Section):
    """Fleet mode: daemons on several hosts share a set of cameras through NATS JetStream (docs/fleet.md).

    Credentials are kept out of every repr and log line (`SecretStr`); give them as ``${file:...}``.
    """

    nats: tuple[str, ...] = Field(
        min_length=1,
        description="NATS server URLs (nats://host:4222 or tls://host:4222); the client fails over between "
        "them.",
    )
    name: str = Field(
        min_length=1,
        max_length=64,
        description="The fleet's name: its cameras, leases and durable detections live under it (letters, "
        "digits, '_' and '-').",
    )
    daemon: str | None = Field(
        default=None,
        max_length=64,
        description="This daemon's name in the fleet (shown by `yolostream fleet status`); None: the host "
        "name.",
    )
    lease_s: StrictFloat = Field(
        default=10.0,
        ge=1,
        le=3600,
        description="A camera lease expires this long after its last renewal (renewed every lease_s/3): "
        "the longest a dead daemon's cameras stay dark before another takes them.",
    )
    capacity: StrictInt = Field(default=32, ge=0, description="Most fleet cameras this daemon runs at once.")
    replicas: StrictInt = Field(
        default=3,
        ge=1,
        le=5,
        description="JetStream replicas of the fleet's buckets and detection stream (at most the number of "
        "servers in the cluster; 1 for a single server).",
    )
    durable: StrictBool = Field(
        default=True,
        description="Also publish every det/evt message to the fleet's JetStream stream "
        "(yolostream.<name>.<kind>.<stream>).",
    )
    max_age_h: StrictFloat = Field(
        default=24.0, gt=0, description="Durable detections are kept this many hours."
    )
    user: str | None = Field(default=None, description="NATS user name (with password).")
    password: SecretStr | None = Field(
        default=None, description="NATS password; give it as ${file:/path}. Never logged."
    )
    token: SecretStr | None = Field(
        default=None, description="NATS authentication token (instead of user/password). Never logged."
    )
    tls: FleetTlsConfig | None = Field(default=None, description="TLS options; None: as the URLs say.")

    @field_validator("nats")
    @classmethod
    def _urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        problems: list[tuple[KeyPath, str]] = []
        for i, url in enumerate(urls):
            parts = urlsplit(url) if "://" in url else None
            if parts is None or parts.scheme not in NATS_SCHEMES or not parts.hostname:
                problems.append(
                    ((i,), f"must be a URL like nats://host:4222 or tls://host:4222, got {redact_url(url)!r}")
                )
            elif _url_port(url) is not None and not (_url_port(url) or "").isdigit():
                problems.append(((i,), f"has a port that is not a number: {redact_url(url)!r}"))
        if problems:
            _fail(*problems)
        return urls

    @field_validator("name", "daemon")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        if value is not None and not _FLEET_TOKEN.fullmatch(value):
            raise ValueError(
                f"must start with a letter or digit and contain only letters, digits, '_' and '-' (it is "
                f"part of NATS subjects and bucket names), got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _credentials(self) -> FleetConfig:
        if self.token is not None and (self.user is not None or self.password is not None):
            _fail((("token",), "give a token or user/password, not both"))
        if (self.user is None) != (self.password is None):
            _fail((("password" if self.password is None else "user",), "user and password go together"))
        return self

    @property
    def display_urls(self) -> str:
        """The server URLs with any password redacted: safe for logs."""
        return ", ".join(redact_url(u) for u in self.nats)


# --------------------------------------------------------------------------------------------------- config


class Config(_Section):
    """The whole configuration. Sections other than model and sources may be left out (all defaults)."""

    model: ModelConfig = Field(description="The detector model.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Inference backend and batching.")
    detection: DetectionConfig = Field(default_factory=DetectionConfig, description="Thresholds and classes.")
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig, description="Object tracking (defaults of every source)."
    )
    sources: tuple[SourceConfig, ...] = Field(
        default=(),
        description="The video streams (at least one, unless fleet mode gives this daemon its cameras).",
    )
    publish: PublishConfig = Field(default_factory=PublishConfig, description="ZeroMQ output.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")
    supervisor: SupervisorConfig = Field(
        default_factory=SupervisorConfig, description="Worker restarts and recycling."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus metrics and health checks over HTTP."
    )
    fleet: FleetConfig | None = Field(
        default=None, description="Fleet mode: share cameras with other daemons through NATS; None: off."
    )

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        # What `_sources_or_fleet` checks, for editors: without fleet, sources is required and not empty.
        json_schema_extra={
            "if": {"not": {"required": ["fleet"]}},
            "then": {"required": ["sources"], "properties": {"sources": {"minItems": 1}}},
        },
    )

    _source_path: Path | None = PrivateAttr(None)

    @property
    def source_path(self) -> Path | None:
        """The file this config was loaded from (absolute), or None when it came from a string."""
        return self._source_path

    @model_validator(mode="before")
    @classmethod
    def _drop_extensions(cls, data: Any) -> Any:
        # Top-level keys starting with `x-` are ignored (as in docker compose): a place for YAML anchors.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
        return data

    def tracking_for(self, source: SourceConfig) -> TrackingConfig:
        """The tracking settings of `source`: the global section with the source's own keys over it."""
        return source.tracking.over(self.tracking)

    @field_validator("engine", "detection", "tracking", "publish", "logging", mode="before")
    @classmethod
    def _empty_section(cls, value: Any) -> Any:
        return {} if value is None else value  # `engine:` with everything commented out: all defaults

    @model_validator(mode="after")
    def _sources_or_fleet(self) -> Config:
        if not self.sources and self.fleet is None:
            what = (
                "must not be empty"
                if "sources" in self.model_fields_set
                else "missing required key 'sources'"
            )
            _fail((("sources",), f"{what}: give at least one stream, or configure fleet (docs/fleet.md)"))
        return self

    @field_validator("sources")
    @classmethod
    def _unique_ids(cls, sources: tuple[SourceConfig, ...]) -> tuple[SourceConfig, ...]:
        first: dict[str, int] = {}
        duplicates = []
        for i, source in enumerate(sources):
            if source.id in first:
                duplicates.append(
                    ((i, "id"), f"duplicate stream id {source.id!r} (also sources[{first[source.id]}])")
                )
            first.setdefault(source.id, i)
        if duplicates:
            _fail(*duplicates)
        return sources

    @model_validator(mode="after")
    def _source_devices_listed(self) -> Config:
        devices = self.engine.devices
        if devices == "all":  # (which GPUs exist is known only at run time: the supervisor checks)
            return self
        names = worker_names(devices) if devices is not None else []
        problems: list[tuple[KeyPath, str]] = []
        for i, source in enumerate(self.sources):
            if source.device is None or source.device in names:
                continue
            if devices is None:
                why = "needs engine.devices (several inference workers); without it one worker carries all"
            else:
                why = f"names no worker of engine.devices (workers: {', '.join(names)})"
            problems.append((("sources", i, "device"), f"{source.device}: {why}"))
        if problems:
            _fail(*problems)
        return self

    @field_validator("sources")
    @classmethod
    def _analytics(cls, sources: tuple[SourceConfig, ...], info: ValidationInfo) -> tuple[SourceConfig, ...]:
        """Per source: its tracking overrides within bounds, zones and lines named once each and only with
        tracking on, their class names turned into ids."""
        model, tracking = info.data.get("model"), info.data.get("tracking")
        if model is None or tracking is None:  # (their own problems are reported)
            return sources
        names = model.effective_class_names
        problems: list[tuple[KeyPath, str]] = []
        out = []
        for i, source in enumerate(sources):
            effective: TrackingConfig | None = None
            try:
                effective = source.tracking.over(tracking)
            except ValidationError as exc:
                for error in exc.errors():
                    key = error["loc"][0] if error["loc"] else "low_score"
                    problems.append(((i, "tracking", key), _message(error, ("tracking", key))))
            seen: dict[str, str] = {}
            update: dict[str, tuple[Any, ...]] = {}
            for kind in ("zones", "lines"):
                shapes = getattr(source, kind)
                if shapes and effective is not None and not effective.enabled:
                    problems.append(
                        (
                            (i, kind),
                            f"{kind} need tracking: set tracking.enabled (globally or for the source)",
                        )
                    )
                resolved = []
                for j, shape in enumerate(shapes):
                    if shape.name in seen:
                        problems.append(
                            (
                                (i, kind, j, "name"),
                                f"duplicate name {shape.name!r} (also a {seen[shape.name]})",
                            )
                        )
                    seen.setdefault(shape.name, kind[:-1])
                    ids, bad = _class_ids(shape.classes, names)
                    problems += [((i, kind, j, "classes", *path), message) for path, message in bad]
                    resolved.append(shape.model_copy(update={"classes": ids}))
                update[kind] = tuple(resolved)
            out.append(source.model_copy(update=update) if any(update.values()) else source)
        if problems:
            _fail(*problems)
        return tuple(out)

    @field_validator("detection")
    @classmethod
    def _class_names_to_ids(cls, detection: DetectionConfig, info: ValidationInfo) -> DetectionConfig:
        model = info.data.get("model")
        if detection.classes is None or model is None:  # (no model: its own problem is reported)
            return detection
        ids, bad = _class_ids(detection.classes, model.effective_class_names)
        if bad:
            _fail(*[(("classes", *path), message) for path, message in bad])
        return detection.model_copy(update={"classes": ids})


def _class_ids(
    items: tuple[int | str, ...] | None, names: tuple[str, ...]
) -> tuple[tuple[int, ...] | None, list[tuple[KeyPath, str]]]:
    """Class names or ids → ids (each once, in order), and the problems at each bad item's index."""
    if items is None:
        return None, []
    index = {name: i for i, name in enumerate(names)}
    ids: list[int] = []
    problems: list[tuple[KeyPath, str]] = []
    for i, item in enumerate(items):
        if isinstance(item, str) and item not in index:
            hint = _did_you_mean(item, names) or f" (see model.class_names; {len(names)} classes)"
            problems.append(((i,), f"unknown class name {item!r}{hint}"))
        elif isinstance(item, int) and item >= len(names):
            problems.append(((i,), f"class id {item} is out of range: the model has {len(names)} classes"))
        else:
            class_id = index[item] if isinstance(item, str) else item
            if class_id not in ids:
                ids.append(class_id)
    return tuple(ids), problems


# -------------------------------------------------------------------------------------------------- loading


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file (`yolostream schema`), for editors: what `load_config` accepts, less
    what only it can check (``${VAR}`` references, files that must exist, cross-key rules)."""
    schema = Config.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "yolostream configuration",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the YAML config at `path`.

    Args:
        path: the YAML file. Relative paths inside it are resolved against its directory.
        env: variables for ``${VAR}`` interpolation; defaults to ``os.environ``.

    Returns:
        The validated `Config`, with `source_path` set to the file's absolute path.

    Raises:
        ConfigError: the file cannot be read or is invalid; lists every problem found.
    """
    file = Path(path).absolute()
    try:
        info = file.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(os.fspath(path), [ConfigProblem("", None, "not a regular file")])
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                os.fspath(path),
                [
                    ConfigProblem(
                        "", None, f"{info.st_size:,} bytes: a config is at most {MAX_CONFIG_BYTES:,}"
                    )
                ],
            )
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            os.fspath(path), [ConfigProblem("", None, f"cannot read the file: {exc.strerror or exc}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            os.fspath(path), [ConfigProblem("", None, f"not UTF-8 text: {exc.reason}")]
        ) from None
    config = parse_config(text, os.fspath(path), env, base_dir=file.parent)
    config._source_path = file
    return config


def parse_config(
    text: str, filename: str = "<config>", env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    """Validate the YAML config in `text`.

    Args:
        text: the YAML document.
        filename: the name used in error messages.
        env: variables for ``${VAR}`` interpolation; defaults to ``os.environ``.
        base_dir: directory that relative paths are resolved against; defaults to the current directory.

    Raises:
        ConfigError: listing every problem, each with its key path and line.
    """
    return _validate(Config, text, filename, env, base_dir)


class CamerasFile(_Section):
    """A fleet's cameras file (``yolostream fleet put``): a ``sources:`` list, each entry as in a config."""

    sources: tuple[SourceConfig, ...] = Field(min_length=1, description="The fleet's cameras.")

    @field_validator("sources")
    @classmethod
    def _unique(cls, sources: tuple[SourceConfig, ...]) -> tuple[SourceConfig, ...]:
        return Config._unique_ids(sources)


def load_sources(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> tuple[SourceConfig, ...]:
    """Read and validate a cameras file (``sources:`` entries, as in a config; relative paths against its
    directory); raises `ConfigError` naming key and line of every problem."""
    file = Path(path).absolute()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            os.fspath(path), [ConfigProblem("", None, f"cannot read the file: {exc}")]
        ) from None
    return _validate(CamerasFile, text, os.fspath(path), env, file.parent).sources


_M = TypeVar("_M", bound=BaseModel)


def _validate(
    model: type[_M], text: str, filename: str, env: Mapping[str, str] | None, base_dir: Path | None
) -> _M:
    base = Path.cwd() if base_dir is None else Path(base_dir).absolute()
    doc = load_yaml(text, filename, os.environ if env is None else env, base_dir=base)
    try:
        config = model.model_validate(doc.data, context={"base_dir": base})
    except ValidationError as exc:
        problems = list(doc.problems)
        for error in exc.errors():
            for path, message in _problems_from(error, doc.data):
                # No second problem for a key that has one from the file (e.g. an undefined variable).
                if not any(_within(path, p) for p in doc.problems):
                    problems.append(ConfigProblem(format_key(path), doc.line_of(path), message))
        raise ConfigError(filename, _sorted(problems)) from None
    if doc.problems:
        raise ConfigError(filename, _sorted(doc.problems))
    return config


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context or {}
    base = context.get("base_dir")
    return base if isinstance(base, Path) else Path.cwd()


def _within(path: KeyPath, problem: ConfigProblem) -> bool:
    key = format_key(path)
    return key == problem.key or key.startswith((problem.key + ".", problem.key + "["))


def _sorted(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    return sorted(problems, key=lambda p: (p.line or 0, p.key))


# --------------------------------------------------------------------------- pydantic errors → problems


def _problems_from(error: Any, data: Any) -> list[tuple[KeyPath, str]]:
    """Turn one pydantic error into ``(key path, message)`` pairs (several for a `_fail` with many)."""
    path = data_path(error["loc"], data, error["type"] == "missing")
    ctx = error.get("ctx") or {}
    if error["type"] == "yolostream":
        return [((*path, *sub), message) for sub, message in ctx["problems"]]
    value = error.get("input")
    if error["type"] == "too_short" and isinstance(value, list) and len(value) >= ctx.get("min_length", 0):
        return []  # pydantic also counts the items that failed as missing: their own errors say enough
    return [(path, _message(error, path))]


def _message(error: Any, path: KeyPath) -> str:
    kind: str = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    got = f", got {_describe(value)}"
    if kind == "missing":
        return f"missing required key '{path[-1]}'" if path else "missing required key"
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        model = _model_at(path[:-1])
        return f"unknown key '{key}'" + (_did_you_mean(key, list(model.model_fields)) if model else "")
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        return f"must be {bounds[kind]} {limit}{got}"
    if kind == "literal_error":
        choices = [c.strip("'") for c in re.findall(r"'[^']*'", str(ctx.get("expected", "")))]
        hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
        return f"must be one of {', '.join(choices)}{got}{hint}"
    if kind in ("string_too_short", "too_short"):
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"must have at least {least} items{got}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long, got {len(value)}"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    expected = {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "string": "a string (quote it if it looks like a number)",
        "dict": "a mapping (key: value lines)",
        "model": "a mapping (key: value lines)",
        "list": "a list",
        "tuple": "a list",
        "path": "a file path",
    }
    for prefix, what in expected.items():
        if kind.startswith(prefix + "_"):
            return f"must be {what}{got}"
    return str(error["msg"])


def _describe(value: Any) -> str:
    """A short description of a YAML value for messages: ``'four'``, ``true``, ``a list``, ``nothing``."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):  # any string may be a camera URL under the wrong key
        value = redact_url(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(word: Any, choices: Any) -> str:
    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def _model_at(path: KeyPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path` (for suggesting known keys)."""
    model: type[BaseModel] = Config
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        found = _find_model(field.annotation) if field else None
        if found is None:
            return None
        model = found
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None
