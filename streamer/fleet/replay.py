"""``yolostream subscribe --nats``: read the fleet's durable detections, live or from a point in time.

An ordered consumer (ephemeral, created by the server for this reader, in stream order, re-created from the
last message seen when the connection moves to another server) on ``yolostream.<fleet>.*.<stream>``. Each
message is decoded with `streamer.output.protocol.decode` from its subject's topic and its payload, and
printed as ``yolostream subscribe`` prints ZeroMQ messages.
"""

from __future__ import annotations

import asyncio
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TextIO

from streamer.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, YolostreamError
from streamer.fleet.connect import API_TIMEOUT_S, FleetError, connect
from streamer.fleet.names import SUBJECT_ROOT, stream_name, topic_of
from streamer.output.protocol import ProtocolError, decode, to_json
from streamer.output.text import format_message

if TYPE_CHECKING:
    from streamer.config import FleetConfig

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str | None, now: datetime | None = None) -> datetime | str | None:
    """``--since``: None (new messages only), ``"all"`` (from the first one kept), or a UTC start time.

    Accepts ``all``, a duration back from now (``90s``, ``10m``, ``2h``, ``1d``) or an ISO 8601 time
    (``2026-12-03T10:00:00Z``; without a zone it is UTC). Raises ValueError saying what it expects.
    """
    if text is None:
        return None
    text = text.strip()
    if text.lower() == "all":
        return "all"
    if m := _DURATION.fullmatch(text):
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=float(m[1]) * _UNITS[m[2]])
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since must be 'all', a duration (90s, 10m, 2h, 1d) or an ISO time, got {text!r}"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _filter(fleet: str, streams: list[str] | None) -> str:
    return (
        f"{SUBJECT_ROOT}.{fleet}.*.{streams[0]}"
        if streams and len(streams) == 1
        else f"{SUBJECT_ROOT}.{fleet}.>"
    )


async def _read(
    cfg: FleetConfig, streams: list[str] | None, raw_json: bool, limit: int | None, timeout: float | None,
    since: datetime | str | None, out: TextIO,
) -> int:  # fmt: skip
    import nats.errors
    from nats.js.api import ConsumerConfig, DeliverPolicy

    nc = await connect(cfg, "yolostream subscribe")
    try:
        js = nc.jetstream(timeout=API_TIMEOUT_S)
        config = ConsumerConfig()
        policy = DeliverPolicy.NEW
        if since == "all":
            policy = DeliverPolicy.ALL
        elif isinstance(since, datetime):
            policy = DeliverPolicy.BY_START_TIME
            config.opt_start_time = since.astimezone(timezone.utc)
        try:
            sub = await js.subscribe(
                _filter(cfg.name, streams), stream=stream_name(cfg.name), ordered_consumer=True,
                deliver_policy=policy, config=config,
            )  # fmt: skip
        except nats.js.errors.NotFoundError:
            raise FleetError(
                f"fleet {cfg.name!r} has no durable stream {stream_name(cfg.name)} yet"
            ) from None
        received = 0
        wanted = set(streams or ())
        while limit is None or received < limit:
            try:
                msg: Any = await sub.next_msg(timeout=timeout if timeout is not None else 3600.0)
            except nats.errors.TimeoutError:
                if timeout is None:
                    continue
                print(f"yolostream subscribe: nothing for {timeout:g} s", file=sys.stderr)
                return EXIT_FAILURE
            try:
                message = decode(topic_of(cfg.name, msg.subject), msg.data)
            except (ProtocolError, ValueError) as exc:
                print(f"yolostream subscribe: skipping a message: {exc}", file=sys.stderr)
                continue
            if wanted and message.stream not in wanted:
                continue
            received += 1
            out.write((to_json(message) if raw_json else format_message(message)) + "\n")
            out.flush()
        return EXIT_OK
    finally:
        await nc.close()


def subscribe_nats_main(
    cfg: FleetConfig,
    streams: list[str] | None,
    raw_json: bool,
    limit: int | None,
    timeout: float | None,
    since: str | None,
    out: TextIO = sys.stdout,
) -> int:
    """Print the fleet's durable messages (``yolostream subscribe --nats``); the exit code.

    Parameters:
        cfg: the fleet (servers, name, credentials).
        streams: stream ids to print; None or empty for all.
        raw_json: one JSON line per message instead of a readable line.
        limit: stop after this many messages.
        timeout: stop (exit 1) when nothing arrives for this many seconds.
        since: see `parse_since`; None: only messages published from now on.
    """
    try:
        start = parse_since(since)
    except ValueError as exc:
        print(f"yolostream subscribe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    which = ", ".join(streams) if streams else "every stream"
    print(
        f"yolostream subscribe: reading {which} of fleet {cfg.name} from {cfg.display_urls}",
        file=sys.stderr, flush=True,
    )  # fmt: skip
    try:
        return asyncio.run(_read(cfg, streams, raw_json, limit, timeout, start, out))
    except YolostreamError as exc:
        print(f"yolostream subscribe: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK
