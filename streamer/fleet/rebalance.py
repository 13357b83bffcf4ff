"""``yolostream fleet rebalance [--dry-run]``: move cameras so that each live daemon holds its fair share.

Reads the fleet's cameras, leases and daemons; computes the targets (`streamer.fleet.plan`); prints the
plan; unless it is a dry run (or nothing needs to move), writes it to the rebalance bucket and waits until
the members have carried it out: no member over its target and no camera free while a member is under
its target. Then it removes the plan (so that the members' claims are no longer capped by it) and prints
the counts. The plan expires by itself if the command is interrupted. Binds the buckets without creating
any (a dry run changes nothing in NATS).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from streamer.errors import EXIT_FAILURE, EXIT_OK, YolostreamError
from streamer.fleet import buckets
from streamer.fleet.connect import API_TIMEOUT_S, COMMAND_ATTEMPTS, connect
from streamer.fleet.names import cameras_bucket, daemons_bucket, leases_bucket, rebalance_bucket
from streamer.fleet.plan import PLAN_KEY, Plan, fair_targets, moves

if TYPE_CHECKING:
    from streamer.config import FleetConfig

POLL_S = 0.5


@dataclass(frozen=True)
class _State:
    cameras: frozenset[str]
    """The fleet's cameras with a valid entry."""
    holder: dict[str, str]
    """Camera id → the run id of the member that leases it."""
    members: dict[str, dict[str, Any]]
    """Run id → its entry in the daemons bucket (live members only)."""

    def held(self, run: str) -> list[str]:
        return sorted(c for c, r in self.holder.items() if r == run)

    def free(self) -> list[str]:
        return sorted(self.cameras - set(self.holder))

    def ready(self) -> dict[str, dict[str, Any]]:
        """The members that claim cameras (an entry without ``ready`` is taken as ready)."""
        return {run: m for run, m in self.members.items() if m.get("ready", True)}

    def label(self, run: str) -> str:
        """The member's daemon name, or its run id where two members share a name."""
        name = str(self.members.get(run, {}).get("daemon", run))
        same = sum(1 for m in self.members.values() if m.get("daemon") == name)
        return name if same == 1 else run


async def _entries(kv: Any) -> dict[str, Any]:
    return {} if kv is None else await buckets.snapshot(kv)


async def _read(js: Any, cfg: FleetConfig) -> _State:
    cameras = set()
    for cid, entry in (await _entries(await buckets.bind(js, cameras_bucket(cfg.name)))).items():
        try:
            buckets.decode_source(cid, entry.value)
            cameras.add(cid)
        except ValueError:
            continue  # (no daemon runs an invalid entry: it is not shared out)
    leases = await _entries(await buckets.bind(js, leases_bucket(cfg.name)))
    holder = {cid: str(json.loads(e.value).get("run", "")) for cid, e in leases.items()}
    daemons = await _entries(await buckets.bind(js, daemons_bucket(cfg.name)))
    return _State(frozenset(cameras), holder, {run: json.loads(e.value) for run, e in daemons.items()})


def _table(state: _State, targets: dict[str, int], out: TextIO) -> None:
    out.write(f"{'DAEMON':16} {'RUN':20} {'CAPACITY':>8} {'CAMERAS':>7} {'TARGET':>6}\n")
    for run in sorted(state.members, key=lambda r: (str(state.members[r].get("daemon")), r)):
        m = state.members[run]
        target = str(targets[run]) if run in targets else "-"
        out.write(f"{m.get('daemon', '?')!s:16} {run:20} {m.get('capacity', 0):8} "
                  f"{len(state.held(run)):7} {target:>6}\n")  # fmt: skip


def _unfinished(state: _State, targets: dict[str, int]) -> str | None:
    """What the members still have to do, or None when the plan is carried out."""
    over = [f"{state.label(r)} holds {len(state.held(r))} (target {t})" for r, t in targets.items()
            if len(state.held(r)) > t]  # fmt: skip
    if over:
        return ", ".join(over)
    under = [r for r, t in targets.items() if len(state.held(r)) < t]
    free = state.free()
    if under and free:
        return f"{len(free)} camera(s) free ({', '.join(free[:5])}{'…' if len(free) > 5 else ''})"
    return None


async def _gone(kv_daemons: Any, missing: list[str]) -> list[str]:
    """The members of `missing` (absent from a read of the daemons bucket) whose entry is really gone."""
    if kv_daemons is None:
        return missing
    return [run for run in missing if await buckets.is_gone(kv_daemons, run)]


async def _rebalance(js: Any, cfg: FleetConfig, dry_run: bool, out: TextIO) -> int:
    state = await _read(js, cfg)
    if not state.members:
        raise YolostreamError(
            f"fleet {cfg.name}: no live daemon (none has written its entry in the last lease_s): "
            "nothing to rebalance"
        )
    ready = state.ready()
    if not ready:
        raise YolostreamError(f"fleet {cfg.name}: no daemon is ready yet (their models are loading)")
    held = {run: len(state.held(run)) for run in ready}
    targets = fair_targets(
        len(state.cameras), {run: int(m.get("capacity", 0)) for run, m in ready.items()}, held
    )
    planned = moves({run: state.held(run) for run in ready}, targets, free=len(state.free()))
    out.write(f"fleet {cfg.name}: {len(state.cameras)} camera(s), {len(state.holder)} leased, "
              f"{len(ready)} daemon(s) ready\n")  # fmt: skip
    _table(state, targets, out)
    for run in sorted(set(state.members) - set(ready)):
        out.write(f"({state.label(run)} is left out: its model is still loading)\n")
    if not planned:
        out.write("balanced: nothing to move\n")
        return EXIT_OK
    out.write(f"{len(planned)} camera(s) to move:\n")
    for move in planned:
        to = state.label(move.to) if move.to else "(none has room)"
        out.write(f"  {move.camera:20} {state.label(move.source)} → {to}\n")
    if dry_run:
        out.write("dry run: nothing changed\n")
        return EXIT_OK
    kv_plan = await buckets.bind(js, rebalance_bucket(cfg.name))
    if kv_plan is None:
        raise YolostreamError(
            f"fleet {cfg.name}: its daemons do not read rebalance plans (they are older than this command)"
        )
    ttl = float((await kv_plan.status()).ttl or 3 * cfg.lease_s)
    plan = Plan(targets, time.time(), f"{socket.gethostname()} pid {os.getpid()}")
    revision = await kv_plan.put(PLAN_KEY, plan.encode())
    started = time.monotonic()
    out.write(f"plan written (it stands for {ttl:.0f} s); waiting for the members\n")
    out.flush()
    kv_daemons = await buckets.bind(js, daemons_bucket(cfg.name))
    while True:
        await asyncio.sleep(POLL_S)
        try:
            polled = await _read(js, cfg)
        except Exception:  # (a timeout: the state of the last read stands)
            polled = state
        missing = [run for run in targets if run not in polled.members]
        gone = await _gone(kv_daemons, missing)
        if gone or not missing:
            state = polled  # (else a short read: it stands for nothing, see buckets.is_gone)
        left = _unfinished(state, targets)
        if gone or left is None or time.monotonic() - started > ttl:
            break
    elapsed = time.monotonic() - started
    with contextlib.suppress(Exception):  # (only our plan: a newer one of another run stays)
        await kv_plan.delete(PLAN_KEY, last=revision)
    counts = Counter(state.holder.values())
    now = ", ".join(f"{state.label(r)} {counts.get(r, 0)}" for r in sorted(targets) if r in state.members)
    if gone:
        out.write(f"{', '.join(gone)} left the fleet during the rebalance: plan withdrawn after "
                  f"{elapsed:.1f} s; the free cameras go to the others as usual; now: {now}\n")  # fmt: skip
        return EXIT_FAILURE
    if left is not None:
        out.write(f"not done when the plan expired ({elapsed:.0f} s): {left}; now: {now}\n")
        return EXIT_FAILURE
    out.write(f"done in {elapsed:.1f} s: {now}\n")
    return EXIT_OK


def rebalance_main(cfg: FleetConfig, dry_run: bool = False, out: TextIO = sys.stdout) -> int:
    """Print the plan that evens out the fleet's cameras; without `dry_run`, carry it out (see above)."""

    async def main() -> int:
        nc = await connect(cfg, "yolostream fleet rebalance", attempts=COMMAND_ATTEMPTS)
        try:
            return await _rebalance(nc.jetstream(timeout=API_TIMEOUT_S), cfg, dry_run, out)
        finally:
            await nc.close()

    return asyncio.run(main())
