"""What a SIGHUP changes: the running config against the one read again, as a plan (a pure function; the
supervisor carries it out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.config import Config

PIPELINE_SECTIONS = ("model", "engine", "detection", "publish")
"""A change in any of these restarts the inference workers."""


@dataclass(frozen=True)
class ReloadPlan:
    added: list[str]
    removed: list[str]
    changed: list[str]
    """Streams whose settings differ: stopped and started again."""
    restart_inference: bool
    deferred: list[str] = field(default_factory=list)
    """Changes that take effect only at the next start, said in the log."""

    def summary(self) -> str:
        restarts = "; the inference worker restarts for the new settings" if self.restart_inference else ""
        return f"{len(self.added)} added, {len(self.removed)} removed, {len(self.changed)} changed{restarts}"


def plan(old: Config, new: Config, forwarder: bool = False) -> ReloadPlan:
    """What reloading `new` over `old` does; `forwarder`: the daemon relays several inference workers."""
    before = {s.id: s for s in old.sources}
    after = {s.id: s for s in new.sources}
    changed = [sid for sid in after if sid in before and after[sid] != before[sid]]
    deferred = []
    if new.metrics != old.metrics:
        deferred.append("a change of the metrics section takes effect at the next start")
    if new.engine.devices != old.engine.devices:
        deferred.append("a change of engine.devices takes effect at the next start")
    if forwarder and new.publish != old.publish:
        deferred.append("with engine.devices, a change of the publish section takes effect at the next start")
    deferred += [
        f"stream {sid}: a change of its device takes effect at the next start "
        "(a running stream is never moved)"
        for sid in changed
        if after[sid].device != before[sid].device
    ]
    return ReloadPlan(
        added=[sid for sid in after if sid not in before],
        removed=[sid for sid in before if sid not in after],
        changed=changed,
        restart_inference=any(getattr(new, s) != getattr(old, s) for s in PIPELINE_SECTIONS),
        deferred=deferred,
    )
