"""What the supervisor's HTTP endpoint reports, and its health rules: the `Snapshot` of the supervisor's
state, ``/healthz`` (`health`) and ``/readyz`` (`readiness`).

The supervisor's main loop makes a new, immutable `Snapshot` every iteration (at least once a second) and
the server thread (`streamer.observability.endpoint`) only reads the latest one, so the HTTP thread never
touches the supervisor's live state. `streamer.observability.supervisor_metrics` turns it into the metrics
only the supervisor knows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.daemon.processes import InferenceProcess, SourceProcess
    from streamer.fleet.member import FleetStats
    from streamer.observability.status import RunStatus

log = logging.getLogger(__name__)

STATUS_STALE_S = 5.0
"""The inference worker writes its status every second: older than this, it is stuck."""
LOOP_STALE_S = 15.0
"""The supervisor's loop turns at least once a second, but a reload may wait up to 10 s for a source."""
STREAM_STATES = ("starting", "running", "reconnecting", "down", "frozen", "restarting", "ended", "failed")


@dataclass(frozen=True)
class WorkerView:
    worker: str
    """``supervisor``, ``inference`` (``inference:gpu0``... with ``engine.devices``), ``source`` or
    ``decoders`` (a source worker shared by streams)."""
    stream: str
    """The stream of a source worker (a decoder group's streams, comma-separated); empty for the others."""
    pid: int | None
    restarts: int


@dataclass(frozen=True)
class Snapshot:
    """The supervisor's state as the HTTP endpoint reports it."""

    made: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.time)
    """When the daemon started (Unix time)."""
    phase: str = "starting"
    """``starting`` (until the workers are up), ``running``, ``stopping``."""
    inference: str = "loading"
    """``loading`` (its model), ``ready``, ``restarting`` (crashed, waiting for its restart), ``stopped``."""
    inference_ready_at: float = 0.0
    """Monotonic time at which the current inference worker became ready."""
    status: RunStatus | None = None
    streams: Mapping[str, str] = field(default_factory=dict)
    """Stream id → state (one of `STREAM_STATES`), in config order."""
    decoders: Mapping[str, str] = field(default_factory=dict)
    """Stream id → ``cpu`` or ``nvdec``, for the streams that have started."""
    workers: tuple[WorkerView, ...] = ()
    placement: Mapping[str, str] = field(default_factory=dict)
    """Stream id → the name of the inference worker that carries it (only with ``engine.devices``)."""
    forwarder: tuple[int, int] | None = None
    """The publish forwarder's (subscriptions, overflows), with ``engine.devices``
    (`streamer.output.forwarder`)."""
    fleet: FleetStats | None = None
    """The fleet member's lease counts, in fleet mode (`streamer.fleet.member`)."""


def build_snapshot(
    base: Snapshot,
    *,
    phase: str,
    inference: Sequence[InferenceProcess],
    loading: bool,
    ready_at: float,
    sources: Mapping[str, SourceProcess],
    stream_ids: Iterable[str],
    status: RunStatus | None,
    restarts: Mapping[tuple[str, str], int],
    supervisor_pid: int,
    placement: Mapping[str, str] | None = None,
    forwarder: tuple[int, int] | None = None,
    fleet: FleetStats | None = None,
) -> Snapshot:
    """A new `Snapshot` from the supervisor's state (`base` gives the start time)."""
    streams: dict[str, str] = {}
    decoders: dict[str, str] = {}
    for sid in dict.fromkeys([*stream_ids, *sources]):
        worker = sources.get(sid)
        heard = status.streams.get(sid) if status is not None else None
        if heard is not None and heard.decoder:
            decoders[sid] = heard.decoder
        if worker is not None and worker.done:
            state = "failed" if worker.failed else "ended"
        elif worker is not None and worker.restart_at is not None:
            state = "restarting"
        else:
            state = heard.state if heard is not None else "starting"
        streams[sid] = state
    if loading:
        inference_state = "loading"
    elif inference and all(p.alive() for p in inference):
        inference_state = "ready"
    elif any(p.restart_at is not None for p in inference):
        inference_state = "restarting"
    else:
        inference_state = "stopped"
    workers = [WorkerView("supervisor", "", supervisor_pid, 0)]
    for p in inference:
        kind = f"inference:{p.name}" if p.name else "inference"
        workers.append(WorkerView(kind, "", p.pid, restarts.get(("inference", p.name), 0)))
    processes: dict[tuple[str, str], list[str]] = {}
    for sid, w in sources.items():
        processes.setdefault(w.process_key(), []).append(sid)
    for (kind, _name), sids in processes.items():  # a decoder group: one row for its streams
        pid = next((p for p in (sources[sid].pid for sid in sids) if p is not None), None)
        count = max(restarts.get(("source", sid), 0) for sid in sids)
        workers.append(WorkerView(kind, ",".join(sids), pid, count))
    return Snapshot(
        started=base.started,
        phase=phase,
        inference=inference_state,
        inference_ready_at=ready_at,
        status=status,
        streams=streams,
        decoders=decoders,
        workers=tuple(workers),
        placement=dict(placement or {}),
        forwarder=forwarder,
        fleet=fleet,
    )


# ------------------------------------------------------------------------------------------ health checks


def health(snap: Snapshot, now: float | None = None, wall: float | None = None) -> tuple[bool, str]:
    """``/healthz``: is the daemon alive and making progress? ``(healthy, reason)``.

    Healthy while it starts and while the inference worker loads its model; then only while the
    supervisor's loop turns and the inference worker's status file is fresh.
    """
    now = time.monotonic() if now is None else now
    wall = time.time() if wall is None else wall
    if now - snap.made > LOOP_STALE_S:
        return False, f"the supervisor's loop has not run for {now - snap.made:.0f} s"
    if snap.phase == "starting" or snap.inference == "loading":
        return True, "starting: the inference worker is loading the model"
    if snap.inference == "restarting":
        return False, "the inference worker died and is being restarted"
    if snap.inference == "stopped":
        return snap.phase == "stopping", "stopping" if snap.phase == "stopping" else "no inference worker"
    if now - snap.inference_ready_at < STATUS_STALE_S:
        return True, "ok (the inference worker just started)"
    if snap.status is None:
        return False, "the inference worker has written no status"
    age = wall - snap.status.time
    if age > STATUS_STALE_S:
        return False, f"the inference worker has written no status for {age:.0f} s: it is stuck"
    return True, "ok"


def readiness(snap: Snapshot) -> tuple[bool, str]:
    """``/readyz``: the inference worker is ready and at least one stream is running. ``(ready, reason)``."""
    if snap.phase != "running":
        return False, snap.phase
    if snap.inference != "ready":
        return False, f"inference worker: {snap.inference}"
    if not any(state == "running" for state in snap.streams.values()):
        return False, "no stream is running"
    return True, "ok"


__all__ = ["STREAM_STATES", "Snapshot", "WorkerView", "build_snapshot", "health", "readiness"]
