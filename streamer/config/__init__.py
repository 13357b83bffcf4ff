"""The daemon's configuration: one YAML file, validated into frozen pydantic models, one class per section.

`load_config` / `parse_config` return a `Config` or raise `ConfigError` listing *every* problem found,
each with its key path (``sources[1].fps_limit``) and YAML line. Validation does no I/O: files are not
checked for existence and devices are not probed (the workers do that, with errors that name the stream).
Relative paths are resolved against the config file's directory. See docs/config.md for every key.

The package: the root `Config` and the loaders here; the sections in `model` (model, engine, detection),
`sources` (a stream and its reconnects), `service` (publish, CURVE, supervisor, logging, metrics, fleet)
and `analytics` (tracking, zones, lines); `validate` turns pydantic's errors into problems with key and
line, `yamlfile` reads the YAML keeping every key's line. The names most code needs are importable from
here (`__all__`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import (
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streamer.config.analytics import TrackingConfig
from streamer.config.base import Section, fail
from streamer.config.model import DetectionConfig, EngineConfig, ModelConfig, worker_names
from streamer.config.service import (
    CurveConfig,
    FleetConfig,
    LoggingConfig,
    MetricsConfig,
    PublishConfig,
    SupervisorConfig,
    parse_listen,
)
from streamer.config.sources import ReconnectConfig, SourceConfig
from streamer.config.urls import redact_url
from streamer.config.validate import did_you_mean, error_message, validate
from streamer.config.yamlfile import KeyPath
from streamer.errors import ConfigError, ConfigProblem

__all__ = [
    "MAX_CONFIG_BYTES",
    "CamerasFile",
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
    "SupervisorConfig",
    "TrackingConfig",
    "json_schema",
    "load_config",
    "load_sources",
    "parse_config",
    "parse_listen",
    "redact_url",
    "worker_names",
]

MAX_CONFIG_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused before it is parsed."""


class Config(Section):
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
            fail((("sources",), f"{what}: give at least one stream, or configure fleet (docs/fleet.md)"))
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
            fail(*duplicates)
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
            fail(*problems)
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
                    problems.append(((i, "tracking", key), error_message(error, ("tracking", key), Config)))
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
            fail(*problems)
        return tuple(out)

    @field_validator("detection")
    @classmethod
    def _class_names_to_ids(cls, detection: DetectionConfig, info: ValidationInfo) -> DetectionConfig:
        model = info.data.get("model")
        if detection.classes is None or model is None:  # (no model: its own problem is reported)
            return detection
        ids, bad = _class_ids(detection.classes, model.effective_class_names)
        if bad:
            fail(*[(("classes", *path), message) for path, message in bad])
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
            hint = did_you_mean(item, names) or f" (see model.class_names; {len(names)} classes)"
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
    return validate(Config, text, filename, env, base_dir)


class CamerasFile(Section):
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
    return validate(CamerasFile, text, os.fspath(path), env, file.parent).sources
