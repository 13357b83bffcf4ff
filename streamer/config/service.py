"""Config sections of the service around the pipeline: publishing (`PublishConfig`, `CurveConfig`), the
supervisor, logging, metrics and fleet mode (`FleetConfig`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from streamer.config.base import Section, fail, resolved
from streamer.config.urls import redact_url, url_port
from streamer.config.yamlfile import KeyPath

ENDPOINT_PREFIXES = ("tcp://", "ipc://", "inproc://")


def _path_list(value: Any) -> Any:
    return [value] if isinstance(value, (str, Path)) else value


class CurveConfig(Section):
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
        return resolved(value, info) if isinstance(value, Path) else tuple(resolved(p, info) for p in value)

    @model_validator(mode="after")
    def _who_is_admitted(self) -> CurveConfig:
        if self.allow_any_client and self.authorized_clients:
            fail((("allow_any_client",), "give authorized_clients or allow_any_client: true, not both"))
        if not self.allow_any_client and not self.authorized_clients:
            fail(
                (
                    ("authorized_clients",),
                    "missing: the directory (or files) of the subscribers' public keys, or set "
                    "allow_any_client: true to admit any subscriber that has the server's public key",
                )
            )
        return self


class PublishConfig(Section):
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


class SupervisorConfig(Section):
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


class LoggingConfig(Section):
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


class MetricsConfig(Section):
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


class FleetTlsConfig(Section):
    """TLS to the NATS servers: the CA that signs them, and a client certificate where they ask for one."""

    ca_file: Path | None = Field(
        default=None, description="CA certificate(s) (PEM) that the servers' certificates chain to."
    )
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM), with key_file.")
    key_file: Path | None = Field(default=None, description="The client certificate's private key (PEM).")

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _resolve_tls(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return resolved(value, info)

    @model_validator(mode="after")
    def _pair(self) -> FleetTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            fail(((missing,), "cert_file and key_file go together: give both or neither"))
        return self


class FleetConfig(Section):
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
            elif url_port(url) is not None and not (url_port(url) or "").isdigit():
                problems.append(((i,), f"has a port that is not a number: {redact_url(url)!r}"))
        if problems:
            fail(*problems)
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
            fail((("token",), "give a token or user/password, not both"))
        if (self.user is None) != (self.password is None):
            fail((("password" if self.password is None else "user",), "user and password go together"))
        return self

    @property
    def display_urls(self) -> str:
        """The server URLs with any password redacted: safe for logs."""
        return ", ".join(redact_url(u) for u in self.nats)
