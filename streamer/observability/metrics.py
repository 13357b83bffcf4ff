"""What the worker processes count and time, as Prometheus metrics (docs/metrics.md lists them all).

Every worker is its own process, so the metrics use prometheus-client's *multiprocess mode*: the supervisor
sets ``PROMETHEUS_MULTIPROC_DIR`` (a folder of its run directory) before it spawns any worker, each worker
writes its values into memory-mapped files of that folder, and the supervisor's HTTP endpoint adds them up
(`streamer.observability.endpoint`). Counters of a worker that exited stay in its files, so totals keep rising
across restarts. Without the variable (metrics disabled, or a loop driven in-process by a test) the same
objects count in memory and nobody reads them.

The metric objects are made on first use, per process and never registered in the default registry: a
source worker makes only the source metrics, the inference worker only its own, the supervisor (which
imports the worker modules) none: its own figures (stream states, restarts, the fleet member's lease
counts) are computed at scrape time by `streamer.observability.supervisor_metrics`. Callers bind the
labels once (``.labels(stream)``) and keep the child, so that counting a frame costs an increment, not a
label lookup.

Labels name a stream by its id, never by its URL (which may carry credentials).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

from streamer.observability.names import (
    FRAME_LATENCY,
    FRAMES_DECODED,
    FRAMES_DROPPED,
    FRAMES_PUBLISHED,
    GPU_MEMORY_TOTAL,
    GPU_MEMORY_USED,
    LINE_CROSSINGS,
    PREFIX,
    PUBLISH_OVERFLOWS,
    RECONNECTS,
    SUBSCRIPTIONS,
    ZONE_EVENTS,
    ZONE_OCCUPANCY,
)

# Dropped-frame reasons (the `reason` label of frames_dropped_total).
DROP_RING_FULL = "ring_full"
"""Source side, live or paced streams: every slot of the stream's ring held a frame not yet inferred."""
DROP_NOTIFY_FULL = "notify_full"
"""Source side: the notification queue to the inference worker was full (it is gone or far behind)."""
DROP_INFERENCE_BEHIND = "inference_behind"
"""Inference side, live streams: a newer frame of the stream arrived before this one was batched."""
DROP_STALE_SLOT = "stale_slot"
"""Inference side: the frame's ring slot was reused or its ring was gone before it could be read."""
DROP_INFERENCE_RESTART = "inference_restart"
"""Inference side: announced to an inference worker that died (or was stopped) before publishing it."""

# Why a fleet daemon stopped a camera (the `reason` label of fleet_cameras_stopped_total).
FLEET_LEASE_LOST = "lease_lost"
"""A renewal was refused: the lease had expired, or another daemon holds it now."""
FLEET_NO_RENEWAL = "no_renewal"
"""No renewal got through for 2/3 lease_s (NATS unreachable): stopped before the lease could expire."""
FLEET_REMOVED = "removed"
"""The camera was removed from the fleet (``yolostream fleet rm``)."""
FLEET_REBALANCE = "rebalance"
"""Given up to another daemon by ``yolostream fleet rebalance``."""
FLEET_STOP_REASONS = (FLEET_LEASE_LOST, FLEET_NO_RENEWAL, FLEET_REMOVED, FLEET_REBALANCE)

# Bucket upper bounds, in seconds (or frames, for batch sizes).
_FAST_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_PUBLISH_S = (0.00002, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)
_INFER_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LATENCY_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_BATCH = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    return Counter(PREFIX + name, doc, labels, registry=None)


def _gauge(name: str, doc: str, mode: str, labels: tuple[str, ...] = ()) -> Gauge:
    # `mode`: how the supervisor combines the processes' values; "live": only those of running processes.
    return Gauge(PREFIX + name, doc, labels, registry=None, multiprocess_mode=mode)  # type: ignore[arg-type]


def _histogram(name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...] = ()) -> Histogram:
    return Histogram(PREFIX + name, doc, labels, registry=None, buckets=buckets)


@functools.cache
def _frames_dropped() -> Counter:
    # Shared by both kinds of worker: in one process, one object per metric name.
    return _counter(
        FRAMES_DROPPED, "Frames dropped before inference, by stream and reason.", ("stream", "reason")
    )


@dataclass
class SourceMetrics:
    """One stream's metrics in its source worker (children bound to the stream's id)."""

    decoded: Counter
    decode_seconds: Histogram
    reconnects: Counter
    dropped_ring_full: Counter
    dropped_notify_full: Counter


@functools.cache
def _source_families() -> tuple[Counter, Histogram, Counter]:
    return (
        _counter(FRAMES_DECODED, "Frames the decoder produced.", ("stream",)),
        _histogram(
            "decode_seconds",
            "Time to obtain one decoded RGB frame from the decoder (for a live stream this includes "
            "waiting for the camera's data).",
            _FAST_S,
            ("stream",),
        ),
        _counter(RECONNECTS, "Reconnection attempts of a live stream.", ("stream",)),
    )


def source_metrics(stream: str) -> SourceMetrics:
    decoded, decode, reconnects = _source_families()
    dropped = _frames_dropped()
    return SourceMetrics(
        decoded.labels(stream),
        decode.labels(stream),
        reconnects.labels(stream),
        dropped.labels(stream, DROP_RING_FULL),
        dropped.labels(stream, DROP_NOTIFY_FULL),
    )


@dataclass
class StreamMetrics:
    """One stream's metrics in the inference worker."""

    published: Counter
    latency: Histogram
    dropped_behind: Counter
    dropped_stale: Counter
    dropped_restart: Counter


@dataclass
class InferenceMetrics:
    """The inference worker's own metrics; `stream()` binds the per-stream ones."""

    published: Counter
    latency: Histogram
    preprocess_seconds: Histogram
    infer_seconds: Histogram
    postprocess_seconds: Histogram
    publish_seconds: Histogram
    batch_size: Histogram
    publish_overflows: Counter
    subscriptions: Gauge

    def stream(self, stream: str) -> StreamMetrics:
        dropped = _frames_dropped()
        return StreamMetrics(
            self.published.labels(stream),
            self.latency.labels(stream),
            dropped.labels(stream, DROP_INFERENCE_BEHIND),
            dropped.labels(stream, DROP_STALE_SLOT),
            dropped.labels(stream, DROP_INFERENCE_RESTART),
        )


@functools.cache
def inference_metrics() -> InferenceMetrics:
    return InferenceMetrics(
        published=_counter(FRAMES_PUBLISHED, "Frames whose detections were published.", ("stream",)),
        latency=_histogram(
            FRAME_LATENCY,
            "From the frame's capture (decoded) to its detections' publication.",
            _LATENCY_S,
            ("stream",),
        ),
        preprocess_seconds=_histogram(
            "preprocess_seconds", "Letterbox of one frame into the batch buffer.", _FAST_S
        ),
        infer_seconds=_histogram(
            "infer_seconds", "One batch from its submission to the engine to its outputs.", _INFER_S
        ),
        postprocess_seconds=_histogram(
            "postprocess_seconds", "NMS and boxes to source pixels, per frame.", _FAST_S
        ),
        publish_seconds=_histogram(
            "publish_seconds", "Encoding and sending one detections message.", _PUBLISH_S
        ),
        batch_size=_histogram("batch_size", "Frames per batch submitted to the engine.", _BATCH),
        publish_overflows=_counter(
            PUBLISH_OVERFLOWS,
            "Messages that a subscriber missed because its queue was full (one per message).",
        ),
        subscriptions=_gauge(SUBSCRIPTIONS, "Active subscriptions to the publisher.", "livesum"),
    )


@dataclass
class ZoneMetrics:
    """Zones and lines (inference worker), labelled by stream and zone or line name."""

    zone_events: Counter
    """(stream, zone, event): ``enter`` / ``exit``."""
    occupancy: Gauge
    """(stream, zone, class): tracked objects inside now."""
    crossings: Counter
    """(stream, line, direction): ``in`` / ``out``."""


@functools.cache
def zone_metrics() -> ZoneMetrics:
    return ZoneMetrics(
        zone_events=_counter(
            ZONE_EVENTS, "Tracked objects entering or leaving a zone.", ("stream", "zone", "event")
        ),
        occupancy=_gauge(
            ZONE_OCCUPANCY,
            "Tracked objects inside a zone now, by class.",
            "livesum",
            ("stream", "zone", "class"),
        ),
        crossings=_counter(
            LINE_CROSSINGS,
            "Tracked objects crossing a line, by direction.",
            ("stream", "line", "direction"),
        ),
    )


@dataclass
class DurableMetrics:
    """The inference worker's durable sink (fleet mode, `streamer.fleet.durable`)."""

    published: Counter
    acked: Counter
    resent: Counter
    dropped: Counter
    queue_depth: Gauge


@functools.cache
def durable_metrics() -> DurableMetrics:
    return DurableMetrics(
        published=_counter(
            "durable_published_total", "Messages handed to the durable sink for JetStream (each once)."
        ),
        acked=_counter("durable_acked_total", "Messages JetStream acknowledged (stored once)."),
        resent=_counter(
            "durable_resent_total", "Messages sent again after a missing or negative acknowledgement."
        ),
        dropped=_counter(
            "durable_dropped_total", "Messages dropped from a full queue (NATS unreachable for long)."
        ),
        queue_depth=_gauge(
            "durable_queue_depth",
            "Messages queued or in flight, not yet acknowledged by JetStream.",
            "livesum",
        ),
    )


@functools.cache
def gpu_memory_gauges() -> tuple[Gauge, Gauge]:
    """``(used, total)``: made only by an inference worker that runs on a GPU, so a CPU daemon has neither."""
    return (
        _gauge(GPU_MEMORY_USED, "Memory in use on the inference worker's GPU (all processes).", "livemax"),
        _gauge(GPU_MEMORY_TOTAL, "Total memory of the inference worker's GPU.", "livemax"),
    )


def gpu_memory() -> tuple[int, int] | None:
    """``(used, total)`` bytes of this process's current CUDA device, or None.

    Only asks CUDA when this process already uses it (cuda-python's runtime or torch with CUDA initialised
    are loaded): a CPU install never imports either. The figure is the device's (``cudaMemGetInfo``), so
    it includes other processes' memory.
    """
    if "cuda.bindings.runtime" in sys.modules or "cuda.cudart" in sys.modules:
        from streamer.cuda.runtime import load_cudart

        cudart = load_cudart()
        err, free, total = cudart.cudaMemGetInfo()
        if err == cudart.cudaError_t.cudaSuccess:
            return int(total) - int(free), int(total)
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        free, total = torch.cuda.mem_get_info()
        return int(total) - int(free), int(total)
    return None


__all__ = [
    "DROP_INFERENCE_BEHIND",
    "DROP_INFERENCE_RESTART",
    "DROP_NOTIFY_FULL",
    "DROP_RING_FULL",
    "DROP_STALE_SLOT",
    "FLEET_LEASE_LOST",
    "FLEET_NO_RENEWAL",
    "FLEET_REBALANCE",
    "FLEET_REMOVED",
    "FLEET_STOP_REASONS",
    "DurableMetrics",
    "InferenceMetrics",
    "SourceMetrics",
    "StreamMetrics",
    "durable_metrics",
    "gpu_memory",
    "gpu_memory_gauges",
    "inference_metrics",
    "source_metrics",
    "zone_metrics",
]
