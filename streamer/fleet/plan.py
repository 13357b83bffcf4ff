"""A rebalance plan: how many cameras each live daemon of a fleet should hold (``fleet rebalance``).

The command computes it from the fleet's state and writes it to the rebalance bucket (`PLAN_KEY`, expiring
by itself after `PLAN_LEASES` × ``lease_s``); each member reads it every tick. A member over its target
stops its excess cameras (`shed`: the highest-sorted ids, so that the command can say in advance which
move) and then deletes their leases; while the plan stands, every member in it claims at most its target,
through the normal claim path. A member absent from the plan (it joined later) claims as usual.

Pure functions, shared by the command and `streamer.fleet.member`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

PLAN_KEY = "plan"
PLAN_LEASES = 3
"""A plan expires this many ``lease_s`` after it was written (KV TTL): long enough for the members to shed
and claim (about two ticks), short enough that an interrupted rebalance does not cap the members for long."""


@dataclass(frozen=True)
class Plan:
    targets: Mapping[str, int]
    """Member run id → the cameras it should hold."""
    created: float
    """Wall time it was written (for people: members do not read clocks)."""
    by: str
    """Who wrote it (host and pid)."""

    def encode(self) -> bytes:
        return json.dumps(
            {"targets": dict(self.targets), "created": self.created, "by": self.by}, sort_keys=True
        ).encode()

    @classmethod
    def decode(cls, value: bytes) -> Plan:
        """Raises ValueError when `value` is not a plan."""
        try:
            raw = json.loads(value)
            targets = {str(k): int(v) for k, v in raw["targets"].items()}
            return cls(targets, float(raw.get("created", 0.0)), str(raw.get("by", "")))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a rebalance plan: {exc}") from None


def fair_targets(total: int, capacity: Mapping[str, int], held: Mapping[str, int]) -> dict[str, int]:
    """Share `total` cameras among the members (run id → capacity) as evenly as their capacities allow.

    Each member gets the same count or one less (where capacities do not cap them); the extra ones go to
    the members that hold the most now (`held`: run id → cameras held), then by run id, so that as few
    cameras move as possible and the same state always gives the same targets. Fewer than `total` in all
    when the capacities do not add up to it.
    """
    targets = dict.fromkeys(sorted(capacity), 0)
    left = min(total, sum(max(0, c) for c in capacity.values()))
    room = [m for m in targets if capacity[m] > 0]
    while left > 0 and room:
        each = left // len(room)
        if each == 0:
            # the remainder: one more for those that would otherwise give up the most
            for m in sorted(room, key=lambda m: (targets[m] - held.get(m, 0), m))[:left]:
                targets[m] += 1
            break
        for m in room:
            give = min(each, capacity[m] - targets[m])
            targets[m] += give
            left -= give
        room = [m for m in room if targets[m] < capacity[m]]
    return targets


def shed(held: Iterable[str], target: int) -> list[str]:
    """The cameras a member holding `held` gives up to come down to `target`: its highest-sorted ids."""
    return sorted(held)[max(0, target) :]


@dataclass(frozen=True)
class Move:
    camera: str
    source: str
    """Run id of the member that gives the camera up."""
    to: str | None
    """Run id of the member expected to claim it (the first under its target, in run id order: with several
    under target, whichever claims first takes it); None when none has room."""


def moves(holdings: Mapping[str, Collection[str]], targets: Mapping[str, int], free: int = 0) -> list[Move]:
    """The cameras the plan moves: what each member over its target sheds, and who should claim it.

    `holdings`: run id → cameras held, for the members of `targets`; `free`: cameras leased by nobody,
    which the members under target may claim first (a forecast: claims are first come, first served)."""
    want = {m: t - len(holdings.get(m, ())) for m, t in targets.items()}
    receivers = [m for m in sorted(want) if want[m] > 0]
    out: list[Move] = []
    for source in sorted(targets):
        for camera in shed(holdings.get(source, ()), targets[source]):
            while receivers and free > 0:  # the free cameras fill the receivers first
                take = min(free, want[receivers[0]])
                want[receivers[0]] -= take
                free -= take
                if want[receivers[0]] == 0:
                    receivers.pop(0)
            to = receivers[0] if receivers else None
            if to is not None:
                want[to] -= 1
                if want[to] == 0:
                    receivers.pop(0)
            out.append(Move(camera, source, to))
    return out
