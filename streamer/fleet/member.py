"""This daemon as a member of its fleet: it claims cameras with leases in NATS KV and renews them.

`FleetMember` runs in a thread of the supervisor with its own asyncio loop and NATS connection. Every
``lease_s``/3 (a *tick*) it:

1. renews each lease it holds with a revision-checked update (a refused update means the lease is
   someone else's now: the camera is dropped at once);
2. drops every camera whose last successful renewal was *sent* more than ``2/3 lease_s`` ago (NATS
   unreachable): the lease, written no earlier than that send, cannot expire elsewhere for another
   ``lease_s``/3, and the supervisor stops the camera well before;
3. writes its own entry in the daemons bucket (name, host, capacity, ready, cameras; it expires like a
   lease);
4. reads the camera set; a held camera that was removed is stopped and its lease deleted, one whose entry
   changed is handed to the supervisor again (it restarts it);
5. reads the rebalance plan (`streamer.fleet.plan`), if one stands: over its target, it hands over its
   excess cameras: it stops them first (they leave `wanted()`) and deletes their leases once the
   supervisor says they no longer run (`running()`), renewing them meanwhile;
6. claims unleased cameras with KV ``create`` (refused when another daemon holds the key): first up to a
   fair share (cameras / live daemons), and up to ``capacity`` (or its target, while a plan stands) for
   cameras that stay unclaimed a tick.

The supervisor reads `wanted()` on each turn of its loop and starts or stops source workers to match;
`close()` releases every lease (a clean stop), so the others take the cameras at once. `stats()` gives
the lease counts that the supervisor's ``/metrics`` reports (``fleet_*``, docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamer.fleet import buckets
from streamer.fleet.connect import FleetError, connect_until
from streamer.fleet.plan import PLAN_KEY, Plan, shed
from streamer.observability.metrics import (
    FLEET_LEASE_LOST,
    FLEET_NO_RENEWAL,
    FLEET_REBALANCE,
    FLEET_REMOVED,
    FLEET_STOP_REASONS,
)

if TYPE_CHECKING:
    from streamer.config import FleetConfig, SourceConfig

log = logging.getLogger(__name__)

RENEW_FRACTION = 1 / 3
STOP_FRACTION = 2 / 3
"""A camera whose lease was last renewed (sent) this fraction of lease_s ago is stopped."""


def daemon_name(cfg: FleetConfig) -> str:
    """``fleet.daemon``, or this host's name."""
    return cfg.daemon or socket.gethostname().split(".")[0] or "yolostream"


@dataclass(frozen=True)
class FleetStats:
    """What a member has counted since it started (the ``fleet_*`` metrics of
    `streamer.observability.supervisor_metrics`)."""

    leases: int = 0
    """Leases held now."""
    renewals_ok: int = 0
    renewals_failed: int = 0
    """Refused (the lease is gone) or unanswered (NATS unreachable, a timeout)."""
    stopped: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(FLEET_STOP_REASONS, 0))
    """Cameras stopped, by reason (`streamer.observability.metrics.FLEET_STOP_REASONS`)."""


@dataclass
class _Lease:
    source: SourceConfig
    camera_revision: int
    revision: int
    renewed_sent: float  # monotonic time the last successful write was sent
    since: float  # wall time of the claim
    handing_over: bool = False  # stopped for a rebalance; the lease goes once the camera no longer runs


class FleetMember:
    """Holds this daemon's camera leases (see the module docstring). Thread-safe `wanted`, `close`."""

    def __init__(
        self, cfg: FleetConfig, local_ids: set[str], on_change: Callable[[], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.name = daemon_name(cfg)
        self.run_id = f"{self.name}-{secrets.token_hex(3)}"
        self._local_ids = local_ids
        self._on_change = on_change or (lambda: None)
        self._lock = threading.Lock()
        self._leases: dict[str, _Lease] = {}
        """Written under `_lock` only (the supervisor's thread reads it in `running`); read freely by the
        member's own thread, the only writer."""
        self._wanted: dict[str, SourceConfig] = {}
        self._unclaimed_before: set[str] = set()
        self._bad_cameras: dict[str, int] = {}
        self._renewals = [0, 0]  # ok, failed
        self._stopped = dict.fromkeys(FLEET_STOP_REASONS, 0)
        self._running: set[str] | None = None
        """What the supervisor last said it runs (`running`); None: nobody says (a camera stops at once)."""
        self._stopped_told: set[str] = set()
        self._plan_seen: int | None = None
        self._stop = threading.Event()
        self.ready = threading.Event()
        """Set by the supervisor once it can run cameras (the model is loaded): claims wait for it, while
        the daemon is already counted among the members, so that daemons started together share."""
        self._released = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._nudge = asyncio.Event()
        """Set (from any thread, `_wake`) to start the next tick at once."""
        self._thread = threading.Thread(target=self._run, name="fleet-member", daemon=True)
        self.tick_s = cfg.lease_s * RENEW_FRACTION

    def start(self) -> None:
        self._thread.start()

    def wanted(self) -> dict[str, SourceConfig]:
        """The cameras this daemon holds a valid lease on (and keeps): id → its source entry."""
        with self._lock:
            return dict(self._wanted)

    def running(self, ids: set[str]) -> None:
        """Say which fleet cameras run here now (the supervisor, after acting on `wanted()`): the lease of
        a camera being handed over is deleted once it is not among them, so that it never runs twice."""
        with self._lock:
            self._running = set(ids)
            stopped = self._handing_over() - self._running
            new, self._stopped_told = bool(stopped - self._stopped_told), stopped
        if new:  # (once per camera: a release that fails waits for the next tick, not a storm of them)
            self._wake()

    def stats(self) -> FleetStats:
        """The counts so far (for /metrics)."""
        with self._lock:
            ok, failed = self._renewals
            return FleetStats(len(self._leases), ok, failed, dict(self._stopped))

    def close(self, timeout: float = 10.0) -> None:
        """Release every lease (delete it) and disconnect; waits at most `timeout` seconds."""
        self._stop.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except Exception:
            log.exception("fleet: the lease keeper failed; this daemon's fleet cameras stop")
            self._set_wanted({})
        finally:
            self._loop.close()

    def _set_wanted(self, wanted: dict[str, SourceConfig]) -> None:
        with self._lock:
            changed = wanted != self._wanted
            self._wanted = wanted
        if changed:
            self._on_change()

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # (the loop has closed)
            self._loop.call_soon_threadsafe(self._nudge.set)

    def _drop(self, cid: str, reason: str) -> None:
        """Forget lease `cid` (it is gone or going): its camera stops, counted under `reason` if it ran."""
        with self._lock:
            lease = self._leases.pop(cid, None)
            if lease is not None and not lease.handing_over:
                self._stopped[reason] += 1

    def _handing_over(self) -> set[str]:
        """The cameras being handed over (call under `_lock` from another thread)."""
        return {cid for cid, lease in self._leases.items() if lease.handing_over}

    def _kept(self) -> dict[str, _Lease]:
        """The leases whose cameras run here (not being handed over)."""
        return {cid: lease for cid, lease in self._leases.items() if not lease.handing_over}

    def _publish_leases(self) -> None:
        self._set_wanted({cid: lease.source for cid, lease in self._kept().items()})

    async def _main(self) -> None:
        nc = await connect_until(self.cfg, f"yolostream {self.name} fleet", self._stop.is_set)
        if nc is None:
            return
        try:
            js = nc.jetstream(timeout=max(0.5, self.tick_s))
            kv_cams = kv_leases = kv_daemons = kv_plan = None
            watchdog = asyncio.ensure_future(self._expiry_watch())
            while not self._stop.is_set():
                started = time.monotonic()
                self._nudge.clear()
                try:
                    if kv_cams is None or kv_leases is None or kv_daemons is None or kv_plan is None:
                        kv_cams = await buckets.cameras(js, self.cfg)
                        kv_leases = await buckets.leases(js, self.cfg)
                        kv_daemons = await buckets.daemons(js, self.cfg)
                        kv_plan = await buckets.rebalance(js, self.cfg)
                        log.info(
                            "fleet %s: daemon %s (%s) joined on %s, capacity %d, leases of %.0f s",
                            self.cfg.name, self.name, self.run_id, self.cfg.display_urls, self.cfg.capacity,
                            self.cfg.lease_s,
                        )  # fmt: skip
                    await self._tick(kv_cams, kv_leases, kv_daemons, kv_plan)
                except FleetError as exc:
                    log.error("%s", exc)
                except Exception as exc:  # NATS unreachable, timeouts: renewals keep being tried
                    log.debug("fleet: %s: %s", type(exc).__name__, exc)
                with contextlib.suppress(asyncio.TimeoutError):  # (or sooner, when nudged)
                    await asyncio.wait_for(
                        self._nudge.wait(), max(0.05, self.tick_s - (time.monotonic() - started))
                    )
            watchdog.cancel()
            if kv_leases is not None:
                await self._release_all(kv_leases, kv_daemons)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    def _lease_value(self, since: float) -> bytes:
        return json.dumps(
            {"daemon": self.name, "run": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
             "since": since, "renewed": time.time()}
        ).encode()  # fmt: skip

    async def _tick(self, kv_cams: Any, kv_leases: Any, kv_daemons: Any, kv_plan: Any) -> None:
        import nats.js.errors

        # 1. renew (all at once: a server that does not answer costs one timeout, not one per lease)
        async def renew(cid: str, lease: _Lease) -> None:
            sent = time.monotonic()
            try:
                lease.revision = await kv_leases.update(
                    cid, self._lease_value(lease.since), last=lease.revision
                )
                lease.renewed_sent = sent
                self._renewals[0] += 1
            except nats.js.errors.KeyWrongLastSequenceError:
                self._renewals[1] += 1
                if not lease.handing_over:
                    log.warning("fleet: the lease of camera %s was lost (expired or taken): stopping it", cid)
                self._drop(cid, FLEET_LEASE_LOST)
            except Exception:
                self._renewals[1] += 1
                raise

        results = await asyncio.gather(
            *(renew(cid, lease) for cid, lease in list(self._leases.items())), return_exceptions=True
        )
        self._publish_leases()
        if any(isinstance(r, Exception) for r in results):
            return  # NATS is not answering: claim nothing now
        await self._release_handed_over(kv_leases)
        # 3. say who we are
        me = {
            "daemon": self.name, "host": socket.gethostname(), "pid": os.getpid(),
            "capacity": self.cfg.capacity, "ready": self.ready.is_set(), "cameras": sorted(self._kept()),
            "time": time.time(),
        }  # fmt: skip
        await kv_daemons.put(self.run_id, json.dumps(me).encode())
        # 4. the camera set
        entries = await buckets.snapshot(kv_cams, timeout=max(1.0, self.tick_s))
        cameras: dict[str, tuple[SourceConfig, int]] = {}
        for cid, entry in entries.items():
            try:
                cameras[cid] = (buckets.decode_source(cid, entry.value), entry.revision)
            except ValueError as exc:
                if self._bad_cameras.get(cid) != entry.revision:
                    log.error("%s", exc)
                    self._bad_cameras[cid] = entry.revision
        for cid, lease in list(self._leases.items()):
            if cid not in cameras:
                if not await buckets.is_gone(kv_cams, cid):
                    log.debug("fleet: camera %s missing from a snapshot but still in the bucket", cid)
                    continue
                log.info("fleet: camera %s was removed from the fleet: stopping it", cid)
                self._drop(cid, FLEET_REMOVED)
                self._publish_leases()
                with contextlib.suppress(Exception):
                    await kv_leases.delete(cid, last=lease.revision)
            elif cameras[cid][1] != lease.camera_revision:
                log.info("fleet: camera %s changed: restarting it", cid)
                lease.source, lease.camera_revision = cameras[cid]
        self._publish_leases()
        # 5. a rebalance
        target = await self._target(kv_plan)
        if target is not None and len(self._kept()) > target:
            await self._hand_over(shed(self._kept(), target), kv_leases)
        # 6. claim
        kept = len(self._kept())
        room = (self.cfg.capacity if target is None else min(self.cfg.capacity, target)) - kept
        if room <= 0 or not self.ready.is_set():
            return
        held = set(await buckets.snapshot(kv_leases, timeout=max(1.0, self.tick_s)))
        free = sorted(
            c for c in cameras if c not in held and c not in self._leases and c not in self._local_ids
        )
        members = max(1, len(await buckets.snapshot(kv_daemons, timeout=max(1.0, self.tick_s))))
        share = math.ceil(len(cameras) / members) - kept
        patient = [c for c in free if c in self._unclaimed_before]
        take = free[: max(0, min(room, share))]
        take += [c for c in patient if c not in take][: max(0, room - len(take))]
        self._unclaimed_before = set(free) - set(take)
        for cid in take:
            since = time.time()
            sent = time.monotonic()
            try:
                revision = await kv_leases.create(cid, self._lease_value(since))
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another daemon was quicker
            source, camera_revision = cameras[cid]
            with self._lock:
                self._leases[cid] = _Lease(source, camera_revision, revision, sent, since)
            log.info("fleet: claimed camera %s (%s)", cid, source.display_url)
        self._publish_leases()

    async def _target(self, kv_plan: Any) -> int | None:
        """This member's target in the rebalance plan that stands, or None (no plan, or not in it)."""
        import nats.js.errors

        try:
            entry = await kv_plan.get(PLAN_KEY)
        except nats.js.errors.NotFoundError:
            return None
        try:
            plan = Plan.decode(entry.value or b"")
        except ValueError as exc:
            if self._plan_seen != entry.revision:
                log.error("fleet: ignoring the rebalance plan (revision %d): %s", entry.revision, exc)
                self._plan_seen = entry.revision
            return None
        target = plan.targets.get(self.run_id)
        if self._plan_seen != entry.revision:
            self._plan_seen = entry.revision
            log.info(
                "fleet: rebalance plan by %s: %s", plan.by,
                f"this daemon holds {len(self._kept())} camera(s), its target is {target}"
                if target is not None else "this daemon is not in it (it joined later): it claims as usual",
            )  # fmt: skip
        return target

    async def _hand_over(self, cids: list[str], kv_leases: Any) -> None:
        """Stop cameras `cids` here for a rebalance; their leases go once they no longer run."""
        log.info("fleet: rebalance: handing over camera(s) %s", ", ".join(cids))
        with self._lock:
            for cid in cids:
                self._leases[cid].handing_over = True
                self._stopped[FLEET_REBALANCE] += 1
        self._publish_leases()
        await self._release_handed_over(kv_leases)

    async def _release_handed_over(self, kv_leases: Any) -> None:
        """Delete the leases of the cameras handed over that the supervisor no longer runs."""
        import nats.js.errors

        with self._lock:
            running = self._running
            done = [c for c in self._handing_over() if running is None or c not in running]
        for cid in done:
            lease = self._leases.get(cid)
            if lease is None:
                continue
            try:
                await kv_leases.delete(cid, last=lease.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # (no longer ours anyway)
            except Exception as exc:  # NATS not answering: again at the next tick (renewed meanwhile)
                log.debug("fleet: releasing camera %s: %s: %s", cid, type(exc).__name__, exc)
                continue
            self._drop(cid, FLEET_REBALANCE)
            log.info("fleet: released camera %s for a rebalance", cid)

    async def _expiry_watch(self) -> None:
        """`_expire` ten times a second, whatever the tick is waiting for."""
        while True:
            self._expire()
            await asyncio.sleep(0.1)

    def _expire(self) -> None:
        """Drop the cameras whose leases could expire elsewhere soon (renewals not getting through)."""
        limit = self.cfg.lease_s * STOP_FRACTION
        now = time.monotonic()
        for cid, lease in list(self._leases.items()):
            if now - lease.renewed_sent > limit and lease.handing_over:
                self._drop(cid, FLEET_NO_RENEWAL)  # (stopped already: its lease expires by itself)
            elif now - lease.renewed_sent > limit:
                log.warning(
                    "fleet: no lease renewal of camera %s got through for %.1f s (NATS unreachable?): "
                    "stopping it before its lease can expire and another daemon takes it",
                    cid, now - lease.renewed_sent,
                )  # fmt: skip
                self._drop(cid, FLEET_NO_RENEWAL)
        self._publish_leases()

    async def _release_all(self, kv_leases: Any, kv_daemons: Any) -> None:
        for cid, lease in list(self._leases.items()):
            with contextlib.suppress(Exception):
                await kv_leases.delete(cid, last=lease.revision)
                log.info("fleet: released camera %s", cid)
        with self._lock:
            self._leases.clear()
        self._publish_leases()
        if kv_daemons is not None:
            with contextlib.suppress(Exception):
                await kv_daemons.delete(self.run_id)
