"""The fleet's KV buckets: cameras (no expiry), leases and daemons (entries expire after ``lease_s``), the
rebalance plan (expires after `PLAN_LEASES` ``lease_s``)."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from streamer.fleet.connect import FleetError
from streamer.fleet.names import cameras_bucket, daemons_bucket, leases_bucket, rebalance_bucket
from streamer.fleet.plan import PLAN_LEASES

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from streamer.config import FleetConfig, SourceConfig

log = logging.getLogger(__name__)


async def open_bucket(js: JetStreamContext, bucket: str, replicas: int, ttl: float | None = None) -> KeyValue:
    """Bind the bucket, creating it (with `ttl` and `replicas`) if it does not exist yet."""
    import nats.js.errors

    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(bucket=bucket, history=1, ttl=ttl, replicas=replicas)
    except nats.js.errors.APIError as exc:
        raise FleetError(
            f"fleet: JetStream refused the bucket {bucket} with {replicas} replica(s) (fleet.replicas): "
            f"{exc.description}"
        ) from None


async def bind(js: JetStreamContext, bucket: str) -> KeyValue | None:
    """The bucket if it exists, else None: for commands that must not create one (a dry run, `status`)."""
    import nats.js.errors

    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return None


async def cameras(js: JetStreamContext, cfg: FleetConfig) -> KeyValue:
    return await open_bucket(js, cameras_bucket(cfg.name), cfg.replicas)


async def leases(js: JetStreamContext, cfg: FleetConfig) -> KeyValue:
    return await open_bucket(js, leases_bucket(cfg.name), cfg.replicas, ttl=cfg.lease_s)


async def daemons(js: JetStreamContext, cfg: FleetConfig) -> KeyValue:
    return await open_bucket(js, daemons_bucket(cfg.name), cfg.replicas, ttl=cfg.lease_s)


async def rebalance(js: JetStreamContext, cfg: FleetConfig) -> KeyValue:
    return await open_bucket(js, rebalance_bucket(cfg.name), cfg.replicas, ttl=PLAN_LEASES * cfg.lease_s)


async def snapshot(kv: KeyValue, timeout: float = 5.0) -> dict[str, Any]:
    """Every live key of a bucket → its entry (one ordered consumer over the latest values).

    Raises nats.errors.TimeoutError when the values do not all arrive within `timeout` seconds.
    """
    watcher = await kv.watchall(ignore_deletes=True)
    found: dict[str, Any] = {}
    try:
        while (entry := await watcher.updates(timeout=timeout)) is not None:
            if entry.operation is None:
                found[entry.key] = entry
            else:
                found.pop(entry.key, None)
    finally:
        await watcher.stop()
    return found


async def is_gone(kv: KeyValue, key: str) -> bool:
    """Whether `key` is deleted from (or was never in) the bucket, asked of the key itself.

    A `snapshot` can come back short: a daemon under heavy load once saw all five of its cameras missing
    from one and stopped them as removed, while every entry was still there, and `fleet rebalance` in CI
    once saw a live member missing from one and withdrew its plan. So a camera (or a member) missing from
    a snapshot is taken as gone only when this confirms it; a failed read (NATS not answering) is not a
    removal.
    """
    from nats.js.errors import KeyDeletedError, KeyNotFoundError

    try:
        await kv.get(key)
    except (KeyNotFoundError, KeyDeletedError):
        return True
    except Exception:
        return False
    return False


def encode_source(source: SourceConfig) -> bytes:
    """A camera's KV value: its entry as written (validated; paths made absolute), as JSON."""
    return json.dumps(source.model_dump(mode="json", exclude_unset=True), sort_keys=True).encode()


def decode_source(key: str, value: bytes) -> SourceConfig:
    """A camera from its KV value; raises ValueError naming the camera when the entry is invalid."""
    from pydantic import ValidationError

    from streamer.config import SourceConfig

    try:
        source = SourceConfig.model_validate(json.loads(value))
    except (ValueError, ValidationError) as exc:
        raise ValueError(f"fleet camera {key!r} is invalid: {exc}") from None
    if source.id != key:
        raise ValueError(f"fleet camera {key!r} holds the entry of {source.id!r}")
    return source
