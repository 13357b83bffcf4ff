"""``yolostream fleet put|rm|list|status``: edit and show a fleet's camera set, who runs what, and the
rebalance plan that stands (``fleet rebalance``)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from streamer.errors import EXIT_OK
from streamer.fleet import buckets
from streamer.fleet.connect import API_TIMEOUT_S, COMMAND_ATTEMPTS, connect
from streamer.fleet.names import rebalance_bucket
from streamer.fleet.plan import PLAN_KEY, Plan

if TYPE_CHECKING:
    from streamer.config import FleetConfig


async def _with_buckets(cfg: FleetConfig, work: Any) -> Any:
    nc = await connect(cfg, "yolostream fleet", attempts=COMMAND_ATTEMPTS)
    try:
        js = nc.jetstream(timeout=API_TIMEOUT_S)
        return await work(js)
    finally:
        await nc.close()


def put_main(cfg: FleetConfig, path: str | Path, out: TextIO = sys.stdout) -> int:
    """Add (or replace) the cameras of a ``sources:`` file in the fleet's camera set."""
    from streamer.config import load_sources

    sources = load_sources(path)  # (ConfigError: key and line of every problem)

    async def work(js: Any) -> list[str]:
        kv = await buckets.cameras(js, cfg)
        done = []
        for source in sources:
            value = buckets.encode_source(source)
            try:
                same = (await kv.get(source.id)).value == value
            except Exception:
                same = False
            if not same:
                await kv.put(source.id, value)
                done.append(source.id)
        return done

    changed = asyncio.run(_with_buckets(cfg, work))
    out.write(f"fleet {cfg.name}: {len(sources)} camera(s) in {path}, {len(changed)} added or changed"
              f"{': ' + ', '.join(changed) if changed else ''}\n")  # fmt: skip
    return EXIT_OK


def rm_main(cfg: FleetConfig, ids: list[str], out: TextIO = sys.stdout) -> int:
    """Remove cameras from the fleet's set (their daemons stop them within a renewal period)."""

    async def work(js: Any) -> list[str]:
        kv = await buckets.cameras(js, cfg)
        present = set(await buckets.snapshot(kv))
        for cid in ids:
            if cid in present:
                await kv.delete(cid)
        return [c for c in ids if c not in present]

    missing = asyncio.run(_with_buckets(cfg, work))
    out.write(f"fleet {cfg.name}: removed {len(ids) - len(missing)} camera(s)"
              f"{'; not in the fleet: ' + ', '.join(missing) if missing else ''}\n")  # fmt: skip
    return EXIT_OK if not missing else 1


async def _state(js: Any, cfg: FleetConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    cams = await buckets.snapshot(await buckets.cameras(js, cfg))
    leases = await buckets.snapshot(await buckets.leases(js, cfg))
    daemons = await buckets.snapshot(await buckets.daemons(js, cfg))
    return (
        {k: json.loads(e.value) for k, e in cams.items()},
        {k: json.loads(e.value) for k, e in leases.items()},
        {k: json.loads(e.value) for k, e in daemons.items()},
    )


def fleet_state(cfg: FleetConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(cameras: id → entry, leases: id → lease, daemons: run id → entry) as NATS has them now."""
    return asyncio.run(_with_buckets(cfg, lambda js: _state(js, cfg)))


async def _plan(js: Any, cfg: FleetConfig) -> Plan | str | None:
    """The rebalance plan that stands (without creating its bucket), why it cannot be read, or None."""
    import nats.js.errors

    kv = await buckets.bind(js, rebalance_bucket(cfg.name))
    if kv is None:
        return None
    try:
        entry = await kv.get(PLAN_KEY)
    except nats.js.errors.NotFoundError:  # (no plan, or the plan deleted)
        return None
    try:
        return Plan.decode(entry.value or b"")
    except ValueError as exc:
        return str(exc)


def list_main(cfg: FleetConfig, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """The fleet's cameras, one a line: id, URL (passwords redacted), the daemon that runs it."""
    from streamer.config import redact_url

    cams, leases, _ = fleet_state(cfg)
    if as_json:
        out.write(json.dumps({k: {**v, "url": redact_url(v.get("url", ""))} for k, v in cams.items()}) + "\n")
        return EXIT_OK
    for cid in sorted(cams):
        holder = leases.get(cid, {}).get("daemon", "-")
        out.write(f"{cid:20} {holder:16} {redact_url(cams[cid].get('url', ''))}\n")
    return EXIT_OK


def status_main(cfg: FleetConfig, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """Cameras with their holder and lease age, then each live daemon with its load, then the rebalance
    plan that stands, if one does."""

    async def work(js: Any) -> tuple[Any, Plan | str | None]:
        return await _state(js, cfg), await _plan(js, cfg)

    (cams, leases, daemons), plan = asyncio.run(_with_buckets(cfg, work))
    now = time.time()
    if as_json:
        standing = plan if not isinstance(plan, Plan) else json.loads(plan.encode())
        out.write(json.dumps({"cameras": sorted(cams), "leases": leases, "daemons": daemons,
                              "plan": standing}) + "\n")  # fmt: skip
        return EXIT_OK
    out.write(f"fleet {cfg.name}: {len(cams)} camera(s), {len(leases)} leased, {len(daemons)} daemon(s)\n")
    out.write(f"{'CAMERA':20} {'DAEMON':16} {'LEASED FOR':>10} {'RENEWED':>8}\n")
    for cid in sorted(cams):
        lease = leases.get(cid)
        if lease is None:
            out.write(f"{cid:20} {'(unclaimed)':16}\n")
            continue
        out.write(
            f"{cid:20} {lease['daemon']:16} {now - lease['since']:9.0f}s {now - lease['renewed']:7.1f}s\n"
        )
    out.write(f"\n{'DAEMON':16} {'HOST':16} {'CAMERAS':>7} {'CAPACITY':>8}\n")
    for entry in sorted(daemons.values(), key=lambda d: d["daemon"]):
        out.write(
            f"{entry['daemon']:16} {entry['host']:16} {len(entry['cameras']):7} {entry['capacity']:8}\n"
        )
    if isinstance(plan, Plan):
        names = {run: str(d.get("daemon", run)) for run, d in daemons.items()}
        targets = ", ".join(f"{names.get(run, run)} {n}" for run, n in sorted(plan.targets.items()))
        out.write(f"\nrebalance plan written {now - plan.created:.0f} s ago by {plan.by} (it caps each "
                  f"daemon's claims until it is carried out or expires): {targets}\n")  # fmt: skip
    elif plan is not None:
        out.write(f"\nrebalance bucket holds an unreadable plan ({plan}): the daemons ignore it\n")
    return EXIT_OK
