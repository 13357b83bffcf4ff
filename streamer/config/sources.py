"""Config sections of a stream: `SourceConfig` (one camera or file) and its `ReconnectConfig`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

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

from streamer.config.analytics import LineConfig, TrackingOverrides, ZoneConfig
from streamer.config.base import Section, describe, fail, resolved
from streamer.config.urls import LIVE_SCHEMES, redact_url, url_port, url_scheme
from streamer.config.yamlfile import KeyPath

_STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


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
        f"engine.devices), got {describe(value)}"
    )


class ReconnectConfig(Section):
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
            fail((("max_s",), f"must be >= initial_s ({self.initial_s:g}), got {self.max_s:g}"))
        return self


class SourceConfig(Section):
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
        return url_scheme(self.url) in LIVE_SCHEMES

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
        scheme = url_scheme(value)
        try:
            parts = urlsplit(value)
        except ValueError as exc:  # e.g. an unclosed '[' of an IPv6 address
            raise ValueError(f"is not a valid URL ({exc}): {redact_url(value)!r}") from None
        if scheme in LIVE_SCHEMES:
            if not parts.hostname:
                raise ValueError(f"has no host: {redact_url(value)!r}")
            port = url_port(value)
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
        return str(resolved(path, info))

    @field_validator("reconnect", mode="before")
    @classmethod
    def _empty_reconnect(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _loop_files_only(self) -> SourceConfig:
        if self.loop and self.is_live:
            fail((("loop",), "loop is only for files; a live stream cannot be restarted from the beginning"))
        problems: list[tuple[KeyPath, str]] = []
        if not self.is_live:
            problems += [
                ((key,), "only for live streams (rtsp://, http://, ...): a file is not reconnected")
                for key in ("reconnect", "frozen_after_s")
                if key in self.model_fields_set
            ]
        if "transport" in self.model_fields_set and url_scheme(self.url) not in ("rtsp", "rtsps"):
            problems.append((("transport",), "only for rtsp:// and rtsps:// URLs"))
        if problems:
            fail(*problems)
        return self
