"""``yolostream status``: a table of a running daemon's streams and workers, read from its metrics endpoint.

It fetches ``/metrics`` twice, `interval` seconds apart (frames per second and latency percentiles over
that interval; with an interval of 0, one fetch and totals since the start), and ``/readyz``.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamer.errors import EXIT_OK, YolostreamError
from streamer.observability import names

DEFAULT_URL = "http://127.0.0.1:9464"


class StatusError(YolostreamError, ConnectionError):
    """Nothing answers at the metrics URL, or it does not answer like a yolostream daemon."""


def url_of_listen(listen: str) -> str:
    """The URL to reach a daemon whose ``metrics.listen`` is `listen` (a wildcard host → loopback)."""
    from streamer.config import parse_listen

    host, port = parse_listen(listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def fetch(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET `url`: ``(status code, body)``; an HTTP error status is returned, not raised.

    Raises:
        StatusError: nothing answers (connection refused, timeout, unknown host).
    """
    code, body = fetch_bytes(url, timeout)
    return code, body.decode("utf-8", "replace")


def fetch_bytes(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """As `fetch`, the body as bytes."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StatusError(
            f"nothing answers at {url}: {reason} (is `yolostream run` running, with metrics enabled on "
            "that address? see metrics.listen in its config)"
        ) from None


# ------------------------------------------------------------------------------------------------ parsing


@dataclass
class StreamRow:
    state: str = "?"
    decoder: str = "-"
    device: str = "-"
    """The inference worker that carries it (``engine.devices``: gpu0, cpu1, ...)."""
    decoded: float = 0.0
    published: float = 0.0
    dropped: dict[str, float] = field(default_factory=dict)
    reconnects: float = 0.0
    latency: dict[float, float] = field(default_factory=dict)
    """Frame latency histogram: bucket upper bound (s) → cumulative count."""


@dataclass
class WorkerRow:
    worker: str
    stream: str
    rss: float | None = None
    gpu: float | None = None
    """GPU memory of the process (bytes), where nvidia-smi reports it."""
    restarts: float | None = None


@dataclass
class ZoneRow:
    entered: float = 0.0
    exited: float = 0.0
    inside: dict[str, float] = field(default_factory=dict)
    """Class name → tracked objects inside now."""


@dataclass
class Scrape:
    """What `yolostream status` shows, from one ``/metrics`` text."""

    at: float
    streams: dict[str, StreamRow]
    workers: list[WorkerRow]
    values: dict[str, float]
    """Unlabelled samples (uptime, overflows, subscriptions, GPU memory) by name."""
    zones: dict[tuple[str, str], ZoneRow] = field(default_factory=dict)
    """(stream, zone) → its events and occupancy."""
    lines: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    """(stream, line) → direction (``in``, ``out``) → crossings."""


def parse(text: str, at: float | None = None) -> Scrape:
    """Read a ``/metrics`` text into a `Scrape`.

    Raises:
        StatusError: the text is not Prometheus exposition format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    streams: dict[str, StreamRow] = defaultdict(StreamRow)
    workers: dict[tuple[str, str], WorkerRow] = {}
    values: dict[str, float] = {}
    zones: dict[tuple[str, str], ZoneRow] = defaultdict(ZoneRow)
    lines: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError as exc:
        raise StatusError(f"the metrics endpoint answered something that is not metrics: {exc}") from None
    for s in samples:
        name, labels, value = s.name.removeprefix(names.PREFIX), s.labels, s.value
        stream = labels.get("stream", "")
        if name == names.FRAMES_DECODED:
            streams[stream].decoded = value
        elif name == names.FRAMES_PUBLISHED:
            streams[stream].published = value
        elif name == names.FRAMES_DROPPED:
            streams[stream].dropped[labels.get("reason", "?")] = value
        elif name == names.RECONNECTS:
            streams[stream].reconnects = value
        elif name == names.STREAM_STATE and value == 1:
            streams[stream].state = labels.get("state", "?")
        elif name == names.STREAM_DECODER and value == 1:
            streams[stream].decoder = labels.get("decoder", "?")
        elif name == names.STREAM_DEVICE and value == 1:
            streams[stream].device = labels.get("device", "?")
        elif name == names.FRAME_LATENCY + "_bucket":
            streams[stream].latency[float(labels["le"])] = value
        elif name == names.ZONE_EVENTS:
            zone = zones[stream, labels.get("zone", "?")]
            if labels.get("event") == "enter":
                zone.entered = value
            elif labels.get("event") == "exit":
                zone.exited = value
        elif name == names.ZONE_OCCUPANCY:
            zones[stream, labels.get("zone", "?")].inside[labels.get("class", "?")] = value
        elif name == names.LINE_CROSSINGS:
            lines[stream, labels.get("line", "?")][labels.get("direction", "?")] = value
        elif name in (names.PROCESS_RSS, names.PROCESS_GPU, names.WORKER_RESTARTS):
            key = (labels.get("worker", "?"), stream)
            row = workers.setdefault(key, WorkerRow(*key))
            if name == names.WORKER_RESTARTS:
                row.restarts = value
            elif name == names.PROCESS_GPU:
                row.gpu = value
            else:
                row.rss = value
        elif not labels and s.name.startswith(names.PREFIX):
            values[name] = value
    at = time.monotonic() if at is None else at
    return Scrape(at, dict(streams), list(workers.values()), values, dict(zones), dict(lines))


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The `q` quantile of a histogram's cumulative buckets, interpolated as Prometheus does.

    None without observations; ``math.inf`` when it lies above the largest finite bound.
    """
    bounds = sorted(buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    low, below = 0.0, 0.0
    for bound, count in bounds:
        if count >= rank:
            if math.isinf(bound):
                return math.inf
            if count == below:
                return bound
            return low + (bound - low) * (rank - below) / (count - below)
        low, below = bound, count
    return math.inf


def _minus(now: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    return {bound: count - before.get(bound, 0.0) for bound, count in now.items()}


# ------------------------------------------------------------------------------------------------- output


def _duration(seconds: float | None, buckets: dict[float, float]) -> str:
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        finite = [b for b in buckets if not math.isinf(b)]
        return f">{_duration(max(finite), {})}" if finite else "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def _uptime(seconds: float) -> str:
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def render(url: str, now: Scrape, readiness: dict[str, Any], before: Scrape | None = None) -> str:
    """The report: a header line, the streams' table, drops by reason, the workers' table."""
    v = now.values
    ready = readiness.get("ready")
    state = "ready" if ready else f"not ready ({readiness.get('reason', 'unknown')})"
    head = [f"yolostream at {url}: {state}"]
    if names.UPTIME in v:
        head.append(f"up {_uptime(v[names.UPTIME])}")
    subscriptions = v.get(
        names.FORWARDER_SUBSCRIPTIONS, v.get(names.SUBSCRIPTIONS)
    )  # (several workers: the front)
    if subscriptions is not None:
        head.append(f"{subscriptions:.0f} subscription(s)")
    overflows = v.get(names.PUBLISH_OVERFLOWS, 0) + v.get(names.FORWARDER_OVERFLOWS, 0)
    head.append(f"{overflows:.0f} publish overflow(s)")
    lines = ["; ".join(head)]
    if names.GPU_MEMORY_USED in v:
        used, total = v[names.GPU_MEMORY_USED], v.get(names.GPU_MEMORY_TOTAL, 0.0)
        lines.append(f"GPU memory: {used / 2**30:.2f} GiB used of {total / 2**30:.2f} GiB")
    elapsed = now.at - before.at if before is not None else 0.0
    window = f"over the last {elapsed:.1f} s" if before is not None else "since the start"
    states = readiness.get("streams") or {}
    rows, drops = [], []
    placed = any(row.device != "-" for row in now.streams.values())  # (several inference workers)
    for sid in dict.fromkeys([*states, *sorted(now.streams)]):
        row = now.streams.get(sid, StreamRow())
        old = before.streams.get(sid) if before is not None else None
        latency = _minus(row.latency, old.latency) if old is not None else row.latency
        fps = "-"
        if before is not None and elapsed > 0:
            fps = f"{(row.published - (old.published if old else 0.0)) / elapsed:.1f}"
        p50, p95 = quantile(0.5, latency), quantile(0.95, latency)
        rows.append([
            sid, states.get(sid, row.state), row.decoder, _count(row.decoded), _count(row.published),
            _count(sum(row.dropped.values())), fps, _duration(p50, latency), _duration(p95, latency),
            _count(row.reconnects), *([row.device] if placed else []),
        ])  # fmt: skip
        reasons = ", ".join(f"{reason} {n:.0f}" for reason, n in sorted(row.dropped.items()) if n)
        if reasons:
            drops.append(f"  {sid}: {reasons}")
    header = ["STREAM", "STATE", "DECODER", "DECODED", "PUBLISHED", "DROPPED", "FPS", "P50", "P95"]
    header.append("RECONNECTS")
    if placed:
        header.append("DEVICE")
    lines.append("")
    lines += _table(header, rows, right={3, 4, 5, 6, 7, 8, 9}) if rows else ["no streams yet"]
    lines.append(f"(FPS: frames published per second, P50/P95: capture-to-publish latency, {window})")
    if drops:
        lines += ["dropped frames by reason:", *drops]
    lines += _analytics(now)
    order = {"supervisor": 0, "inference": 1, "decoders": 2, "source": 3}
    workers = sorted(now.workers, key=lambda w: (order.get(w.worker.split(":")[0], 4), w.worker, w.stream))
    lines.append("")
    lines += _table(
        ["WORKER", "STREAM", "RSS", "GPU", "RESTARTS"],
        [[w.worker, w.stream, _mib(w.rss), _mib(w.gpu), _count(w.restarts)] for w in workers],
        right={2, 3, 4},
    )
    return "\n".join(lines)


def _analytics(now: Scrape) -> list[str]:
    """The zones' and the lines' tables (counts since the daemon started), if the streams have any."""
    out: list[str] = []
    if now.zones:
        rows = [
            [zone, stream, _count(z.entered), _count(z.exited), _count(sum(z.inside.values())),
             ", ".join(f"{c} {n:.0f}" for c, n in sorted(z.inside.items()) if n) or "-"]
            for (stream, zone), z in sorted(now.zones.items())
        ]  # fmt: skip
        out += ["", *_table(["ZONE", "STREAM", "ENTERED", "EXITED", "INSIDE", "BY CLASS"], rows, {2, 3, 4})]
    if now.lines:
        rows = [
            [line, stream, _count(c.get("in", 0.0)), _count(c.get("out", 0.0))]
            for (stream, line), c in sorted(now.lines.items())
        ]
        out += ["", *_table(["LINE", "STREAM", "IN", "OUT"], rows, {2, 3})]
    return out


def status_main(url: str, interval: float = 1.0, timeout: float = 5.0) -> int:
    """Print the report for the daemon at `url`; raises `StatusError` when nothing answers there."""
    url = url.rstrip("/")
    before = None
    if interval > 0:
        before = parse(_get_metrics(url, timeout))
        time.sleep(interval)
    now = parse(_get_metrics(url, timeout))
    code, body = fetch(f"{url}/readyz", timeout)
    try:
        readiness = json.loads(body) if code in (200, 503) else {}
    except ValueError:
        readiness = {}
    print(render(url, now, readiness, before))
    return EXIT_OK


def snapshot_main(url: str, stream: str, out: Path, timeout: float = 10.0) -> int:
    """Save the picture of `stream` (``/streams/<stream>/latest.jpg``) of the daemon at `url` to `out`.

    Raises:
        StatusError: nothing answers at `url`, or it has no picture of the stream (the reason it gives).
    """
    url = url.rstrip("/")
    code, body = fetch_bytes(f"{url}/streams/{stream}/latest.jpg", timeout)
    if code != 200:
        reason = body.decode("utf-8", "replace").strip()[:300]
        raise StatusError(f"{url}: no picture of stream {stream!r} (HTTP {code}): {reason}")
    out.write_bytes(body)
    print(f"{out}: stream {stream}, {len(body)} bytes")
    return EXIT_OK


def _get_metrics(url: str, timeout: float) -> str:
    code, body = fetch(f"{url}/metrics", timeout)
    if code != 200:
        raise StatusError(f"{url}/metrics answered HTTP {code}: {body.strip()[:200]}")
    return body


__all__ = [
    "DEFAULT_URL",
    "Scrape",
    "StatusError",
    "fetch",
    "fetch_bytes",
    "parse",
    "quantile",
    "render",
    "snapshot_main",
    "status_main",
]
