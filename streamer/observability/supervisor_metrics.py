"""The metrics only the supervisor knows, computed at scrape time from the latest `Snapshot` of its state
(`streamer.observability.health`): each stream's state and decoder, the workers' restarts and memory, the
forwarder's and the fleet member's counts, the age of the inference worker's status file. The endpoint
(`streamer.observability.endpoint`) serves them beside the workers' own metrics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from streamer.observability.health import STREAM_STATES, Snapshot
from streamer.observability.names import (
    FORWARDER_OVERFLOWS,
    FORWARDER_SUBSCRIPTIONS,
    PREFIX,
    PROCESS_GPU,
    PROCESS_RSS,
    STREAM_DECODER,
    STREAM_DEVICE,
    STREAM_STATE,
    UPTIME,
    WORKER_RESTARTS,
)
from streamer.observability.process_memory import gpu_memory_by_pid, rss_mb

if TYPE_CHECKING:
    from streamer.fleet.member import FleetStats


class SupervisorCollector:
    """The metrics only the supervisor knows, computed at scrape time from the latest `Snapshot`."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self._snapshot()
        up = GaugeMetricFamily(
            PREFIX + "stream_up", "1 while the stream is running, else 0.", labels=["stream"]
        )
        state = GaugeMetricFamily(
            PREFIX + STREAM_STATE, "The stream's state (1 for the current one).", labels=["stream", "state"]
        )
        for sid, current in snap.streams.items():
            up.add_metric([sid], float(current == "running"))
            for name in STREAM_STATES:
                state.add_metric([sid, name], float(current == name))
        decoder = GaugeMetricFamily(
            PREFIX + STREAM_DECODER,
            "1 for the decoder the stream runs on (cpu, nvdec); nvdec streams fall back to cpu.",
            labels=["stream", "decoder"],
        )
        for sid, name in snap.decoders.items():
            decoder.add_metric([sid, name], 1.0)
        yield up
        yield state
        yield decoder
        if snap.placement:
            device = GaugeMetricFamily(
                PREFIX + STREAM_DEVICE,
                "1 for the inference worker (engine.devices: gpu0, cpu1, ...) that carries the stream.",
                labels=["stream", "device"],
            )
            for sid, name in snap.placement.items():
                device.add_metric([sid, name], 1.0)
            yield device
        restarts = CounterMetricFamily(
            PREFIX + WORKER_RESTARTS,
            "Restarts of a worker after a crash, a stall or a memory recycle.",
            labels=["worker", "stream"],
        )
        rss = GaugeMetricFamily(
            PREFIX + PROCESS_RSS, "Resident memory of each process.",
            labels=["worker", "stream"],
        )  # fmt: skip
        gpu = GaugeMetricFamily(
            PREFIX + PROCESS_GPU,
            "GPU memory used by each process (from nvidia-smi; absent without a GPU).",
            labels=["worker", "stream"],
        )
        on_gpu = gpu_memory_by_pid()
        for w in snap.workers:
            if w.worker != "supervisor":
                restarts.add_metric([w.worker, w.stream], w.restarts)
            used = rss_mb(w.pid)
            if used is not None:
                rss.add_metric([w.worker, w.stream], used * 1024 * 1024)
            if w.pid in on_gpu:
                gpu.add_metric([w.worker, w.stream], on_gpu[w.pid] * 1024 * 1024)
        yield restarts
        yield rss
        yield gpu
        if snap.forwarder is not None:
            subscriptions, overflows = snap.forwarder
            yield GaugeMetricFamily(
                PREFIX + FORWARDER_SUBSCRIPTIONS,
                "Active subscriptions to publish.endpoint, bound by the forwarder of several inference "
                "workers (each worker's own `subscriptions` counts the forwarder).",
                subscriptions,
            )
            yield CounterMetricFamily(
                PREFIX + FORWARDER_OVERFLOWS,
                "Messages at which the forwarder found a subscriber's queue full (as "
                "publish_overflows_total).",
                overflows,
            )
        if snap.fleet is not None:
            yield from _fleet_families(snap.fleet)
        ready = float(snap.inference == "ready")
        yield GaugeMetricFamily(PREFIX + "inference_ready", "1 while the inference worker is ready.", ready)
        uptime = time.time() - snap.started
        yield GaugeMetricFamily(PREFIX + UPTIME, "Seconds since the daemon started.", uptime)
        if snap.status is not None:
            yield GaugeMetricFamily(
                PREFIX + "status_age_seconds",
                "Age of the inference worker's status (written every second; large: it is stuck).",
                max(0.0, time.time() - snap.status.time),
            )


def _fleet_families(stats: FleetStats) -> Iterable[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield GaugeMetricFamily(PREFIX + "fleet_leases", "Camera leases this daemon holds now.", stats.leases)
    renewals = CounterMetricFamily(
        PREFIX + "fleet_lease_renewals", "Lease renewals, by result (ok, failed).", labels=["result"]
    )
    renewals.add_metric(["ok"], stats.renewals_ok)
    renewals.add_metric(["failed"], stats.renewals_failed)
    yield renewals
    stopped = CounterMetricFamily(
        PREFIX + "fleet_cameras_stopped",
        "Fleet cameras this daemon stopped while running, by reason (lease_lost, no_renewal, removed, "
        "rebalance).",
        labels=["reason"],
    )
    for reason, count in stats.stopped.items():
        stopped.add_metric([reason], count)
    yield stopped
