"""The metrics that more than one module names, defined once: the worker processes make them
(`streamer.observability.metrics`), the supervisor computes some at scrape time
(`streamer.observability.supervisor_metrics`), and ``yolostream status`` reads them (`streamer.cli.status`).
A new column of the status table is a change in two places: the metric and the table.

Names are given without `PREFIX`, as the samples of a scrape name them: a counter with its ``_total``,
a histogram without its ``_bucket``. docs/metrics.md describes every metric.
"""

from __future__ import annotations

PREFIX = "yolostream_"

# per stream (label "stream")
FRAMES_DECODED = "frames_decoded_total"
FRAMES_PUBLISHED = "frames_published_total"
FRAMES_DROPPED = "frames_dropped_total"
"""Label ``reason``."""
RECONNECTS = "reconnects_total"
FRAME_LATENCY = "frame_latency_seconds"
"""A histogram: capture to publish."""
STREAM_STATE = "stream_state"
"""1 for the current ``state`` label."""
STREAM_DECODER = "stream_decoder"
STREAM_DEVICE = "stream_device"

# zones and lines (labels "stream", "zone" / "line")
ZONE_EVENTS = "zone_events_total"
ZONE_OCCUPANCY = "zone_occupancy"
LINE_CROSSINGS = "line_crossings_total"

# per worker process (labels "worker", "stream")
PROCESS_RSS = "process_resident_memory_bytes"
PROCESS_GPU = "process_gpu_memory_bytes"
WORKER_RESTARTS = "worker_restarts_total"

# the daemon
UPTIME = "uptime_seconds"
SUBSCRIPTIONS = "subscriptions"
PUBLISH_OVERFLOWS = "publish_overflows_total"
FORWARDER_SUBSCRIPTIONS = "forwarder_subscriptions"
FORWARDER_OVERFLOWS = "forwarder_overflows_total"
GPU_MEMORY_USED = "gpu_memory_used_bytes"
GPU_MEMORY_TOTAL = "gpu_memory_total_bytes"
