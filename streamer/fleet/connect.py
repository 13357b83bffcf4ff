"""A NATS connection made from the config's ``fleet`` section, and the fleet's JetStream stream.

Credentials go from the config (`SecretStr`) straight into nats-py's options; nothing here logs them, and
the server URLs are logged with any password redacted (`FleetConfig.display_urls`).
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamer.errors import YolostreamError
from streamer.fleet.names import stream_name, subjects

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from streamer.config import FleetConfig

log = logging.getLogger(__name__)

RECONNECT_WAIT_S = 0.5
CONNECT_TIMEOUT_S = 2.0
API_TIMEOUT_S = 5.0


class FleetError(YolostreamError, ConnectionError):
    """NATS could not be reached or refused what the fleet needs (the message says which and why)."""


def tls_context(cfg: FleetConfig) -> ssl.SSLContext | None:
    """The client TLS context of ``fleet.tls`` (reads the files it names), or None without TLS options."""
    tls = cfg.tls
    if tls is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise FleetError(f"fleet.tls: cannot load the certificates: {exc}") from None
    return context


def connect_options(cfg: FleetConfig, name: str) -> dict[str, Any]:
    """Keyword arguments of `nats.connect` for this fleet: reconnect for ever, fail over between servers."""
    options: dict[str, Any] = {
        "servers": list(cfg.nats),
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": RECONNECT_WAIT_S,
        "connect_timeout": CONNECT_TIMEOUT_S,
        # A dead server is noticed within about 2 pings (the lease logic has its own, tighter clock).
        "ping_interval": max(1, int(cfg.lease_s / 3)),
        "max_outstanding_pings": 2,
    }
    if cfg.user is not None and cfg.password is not None:
        options["user"], options["password"] = cfg.user, cfg.password.get_secret_value()
    if cfg.token is not None:
        options["token"] = cfg.token.get_secret_value()
    context = tls_context(cfg)
    if context is not None:
        options["tls"] = context
    return options


INITIAL_CONNECT_S = 15.0


COMMAND_ATTEMPTS = 3
"""Connection attempts per server of a command (``yolostream fleet ...``): a server that refuses the
connection is an error in about a second, not after `INITIAL_CONNECT_S`."""


async def connect(cfg: FleetConfig, name: str, attempts: int = -1, **callbacks: Any) -> Client:
    """Connect to the fleet's servers (trying them for at most `INITIAL_CONNECT_S`, and at most `attempts`
    times each; -1: no limit); once connected the client reconnects by itself (as often).

    Raises:
        FleetError: no server could be reached, or one refused the credentials (which are not shown).
    """
    import asyncio

    import nats
    import nats.errors

    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        # nats-py's own logger says what happened; an authorization error must not be retried for ever
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower():
            refused.set()

    options = connect_options(cfg, name)
    options["max_reconnect_attempts"] = attempts
    options.setdefault("error_cb", on_error)
    options.update(callbacks)
    attempt = asyncio.ensure_future(nats.connect(**options))
    denied = asyncio.ensure_future(refused.wait())
    done, _ = await asyncio.wait(
        {attempt, denied}, timeout=INITIAL_CONNECT_S, return_when=asyncio.FIRST_COMPLETED
    )
    denied.cancel()
    if attempt in done:
        try:
            return attempt.result()
        except (nats.errors.NoServersError, OSError, nats.errors.Error) as exc:
            raise FleetError(
                f"fleet.nats: cannot connect to {cfg.display_urls}: {exc or type(exc).__name__}"
            ) from None
    attempt.cancel()
    with contextlib.suppress(BaseException):
        await attempt
    if refused.is_set():
        raise FleetError(
            f"fleet.nats: cannot connect to {cfg.display_urls}: the server refused the credentials "
            "(fleet.user/password or fleet.token)"
        )
    raise FleetError(
        f"fleet.nats: cannot connect to {cfg.display_urls}: no answer in {INITIAL_CONNECT_S:.0f} s"
    )


async def connect_until(
    cfg: FleetConfig, name: str, stopped: Callable[[], bool], what: str = "", retrying: str = "retrying"
) -> Client | None:
    """`connect`, again every second until it succeeds or `stopped()`; None if it stopped first. The first
    failure is logged once, as ``<what><why>; <retrying>`` (a daemon waits for NATS without flooding its
    log)."""
    import asyncio

    warned = False
    while not stopped():
        try:
            return await connect(cfg, name)
        except FleetError as exc:
            if not warned:
                log.warning("%s%s; %s", what, exc, retrying)
                warned = True
        await asyncio.sleep(1.0)
    return None


async def ensure_stream(js: JetStreamContext, cfg: FleetConfig) -> None:
    """Create the fleet's detection stream if it does not exist yet (an existing one is left as it is).

    Raises:
        FleetError: JetStream refused to create it (e.g. more replicas than servers).
    """
    import nats.js.errors
    from nats.js.api import StreamConfig

    name = stream_name(cfg.name)
    try:
        await js.stream_info(name)
        return
    except nats.js.errors.NotFoundError:
        pass
    config = StreamConfig(
        name=name, subjects=[subjects(cfg.name)], num_replicas=cfg.replicas,
        max_age=cfg.max_age_h * 3600, duplicate_window=120.0,
    )  # fmt: skip
    try:
        await js.add_stream(config)
    except nats.js.errors.APIError as exc:
        raise FleetError(
            f"fleet: JetStream refused the stream {name} with {cfg.replicas} replica(s) (fleet.replicas): "
            f"{exc.description}"
        ) from None
    log.info("created the JetStream stream %s (%s, %d replica(s))", name, subjects(cfg.name), cfg.replicas)
