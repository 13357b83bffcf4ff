"""Durable detections: every message the daemon publishes on ZeroMQ also goes into the fleet's JetStream.

`DurableSink` belongs to the inference worker's `streamer.output.publish.Publisher`: `put` appends the encoded
message to a bounded queue and returns at once (the inference loop never waits on the network); a thread
of its own, with its own asyncio loop and NATS connection, sends the queue in batches of asynchronous
JetStream publishes and waits for their acknowledgements. A message whose acknowledgement does not come
(a server died, the connection is re-established on another one) is sent again with the same
``Nats-Msg-Id``, so that JetStream stores it once (its duplicate window is 2 minutes).

Same subject scheme and payload as ZeroMQ: ``det.<stream>`` becomes ``yolostream.<fleet>.det.<stream>``,
the payload is byte for byte the ZeroMQ one. Headers: ``Nats-Msg-Id`` (``<daemon>.<boot>.<stream>.<seq>``,
unique over the fleet and over restarts), ``Yolostream-Daemon`` (which daemon published it) and
``Yolostream-Encoding`` (json or msgpack).

What it cannot do: while NATS is unreachable the queue grows to ``max_pending`` messages, then the oldest
are dropped (counted in `dropped`, logged); a daemon killed with messages queued loses them.

Its counts go to the ``durable_*`` Prometheus metrics (docs/metrics.md) from the sender thread, every
`REPORT_S` and at `close`, so that `put` costs no more than an append.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from streamer.fleet.connect import API_TIMEOUT_S, FleetError, connect_until, ensure_stream
from streamer.fleet.names import HEADER_DAEMON, HEADER_ENCODING, HEADER_MSG_ID, subject_of
from streamer.observability.metrics import durable_metrics

if TYPE_CHECKING:
    from streamer.config import FleetConfig

log = logging.getLogger(__name__)

BATCH = 512
"""Publishes in flight at once."""
ACK_TIMEOUT_S = 3.0
RETRY_PAUSE_S = 0.2
MAX_PENDING = 200_000
_DROP_LOG_S = 10.0
REPORT_S = 0.5
"""How often the counts are copied into the Prometheus metrics."""

_Item = tuple[str, bytes, str]  # subject, payload, message id


class DurableSink:
    """Mirrors published messages into the fleet's JetStream stream (see the module docstring).

    `put` is thread-safe and never blocks; `close` waits (bounded) until the queue has been stored.
    """

    def __init__(
        self, cfg: FleetConfig, daemon: str, encoding: str = "json", max_pending: int = MAX_PENDING
    ) -> None:
        self._cfg = cfg
        self._daemon = daemon
        self._encoding = encoding
        self._max_pending = max_pending
        self._boot = secrets.token_hex(4)
        self._pending: deque[_Item] = deque()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._wake = asyncio.Event()
        self._closing = False
        self._drop_logged = -_DROP_LOG_S
        self.published = 0
        """Messages handed to `put` (so far: acked + dropped + pending, less what a kill loses)."""
        self.acked = 0
        """Messages JetStream acknowledged (stored, or recognised as duplicates of stored ones)."""
        self.dropped = 0
        """Messages dropped from a full queue (NATS unreachable for long)."""
        self.resent = 0
        """Messages sent again after a missing or negative acknowledgement."""
        self._inflight = 0
        self._deadline = float("inf")
        self._metrics = durable_metrics()
        self._reported = (0, 0, 0, 0)
        self._report_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="durable-sink", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Messages queued or in flight, not yet acknowledged."""
        with self._lock:
            return len(self._pending) + self._inflight

    def put(self, topic: bytes, payload: bytes, stream: str, seq: int) -> None:
        """Queue one encoded message (`topic` ``det.<stream>`` / ``evt.<stream>``) for JetStream."""
        item = (subject_of(self._cfg.name, topic), payload, f"{self._daemon}.{self._boot}.{stream}.{seq}")
        with self._lock:
            self.published += 1
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self.dropped += 1
                now = time.monotonic()
                if now - self._drop_logged >= _DROP_LOG_S:
                    self._drop_logged = now
                    log.warning(
                        "durable detections: NATS has not taken %d queued messages: dropping the oldest "
                        "(%d dropped so far)", len(self._pending), self.dropped,
                    )  # fmt: skip
            self._pending.append(item)
            first = len(self._pending) == 1
        if first:
            with contextlib.suppress(RuntimeError):  # (the loop has closed: close() was called)
                self._loop.call_soon_threadsafe(self._wake.set)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (waiting at most `timeout` seconds), then disconnect. Safe to call twice."""
        self._closing = True
        self._deadline = time.monotonic() + timeout
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._wake.set)
        self._thread.join(timeout + 5.0)
        self._report()
        left = self.pending
        if left:
            log.warning("durable detections: %d message(s) not stored in JetStream before the stop", left)

    # -- the sender thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        except Exception:
            log.exception("durable detections: the sender failed; messages are no longer stored in NATS")
        finally:
            self._loop.close()

    def _report(self) -> None:
        """Add what was counted since the last report to the metrics; set the queue depth."""
        with self._report_lock:
            now = (self.published, self.acked, self.resent, self.dropped)
            m = self._metrics
            counters = (m.published, m.acked, m.resent, m.dropped)
            for counter, new, old in zip(counters, now, self._reported, strict=True):
                if new > old:
                    counter.inc(new - old)
            self._reported = now
            m.queue_depth.set(self.pending)

    async def _report_every(self) -> None:
        while True:
            self._report()
            await asyncio.sleep(REPORT_S)

    def _give_up(self) -> bool:
        return self._closing and time.monotonic() >= self._deadline

    async def _main(self) -> None:
        reporter = asyncio.ensure_future(self._report_every())  # (also while NATS cannot be reached)
        try:
            await self._connect_and_send()
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter

    async def _connect_and_send(self) -> None:
        nc = await connect_until(
            self._cfg, f"yolostream {self._daemon} durable", self._give_up,
            "durable detections: ", "retrying (messages are queued meanwhile)",
        )  # fmt: skip
        if nc is None:
            return
        try:
            js = nc.jetstream(timeout=API_TIMEOUT_S)
            while True:
                try:
                    await ensure_stream(js, self._cfg)
                    break
                except (FleetError, Exception) as exc:  # (nats-py raises timeouts of several kinds)
                    log.error("durable detections: %s; retrying in 5 s", exc)
                    if self._give_up():
                        return
                    await asyncio.sleep(5.0)
            log.info("durable detections: publishing to JetStream on %s", self._cfg.display_urls)
            await self._send_loop(js)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _send_loop(self, js: Any) -> None:
        while True:
            with self._lock:
                batch = [self._pending.popleft() for _ in range(min(BATCH, len(self._pending)))]
                self._inflight = len(batch)
            if not batch:
                if self._closing:
                    return
                self._wake.clear()
                with self._lock:
                    empty = not self._pending
                if empty:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), 1.0)
                continue
            failed = await self._send(js, batch)
            with self._lock:
                self._pending.extendleft(reversed(failed))  # first again, in their order
                self._inflight = 0
            self.acked += len(batch) - len(failed)
            if failed:
                self.resent += len(failed)
                if self._give_up():
                    return
                await asyncio.sleep(RETRY_PAUSE_S)

    async def _send(self, js: Any, batch: list[_Item]) -> list[_Item]:
        """Publish `batch` asynchronously; the items whose acknowledgement did not come (or said no)."""
        futures: list[asyncio.Future[Any]] = []
        headers_base = {HEADER_DAEMON: self._daemon, HEADER_ENCODING: self._encoding}
        try:
            for subject, payload, msg_id in batch:
                headers = {**headers_base, HEADER_MSG_ID: msg_id}
                futures.append(
                    await js.publish_async(subject, payload, wait_stall=ACK_TIMEOUT_S, headers=headers)
                )
        except Exception as exc:  # disconnected, outbound buffer full, too many stalled publishes
            log.debug("durable detections: publish failed (%s); sending again", exc)
        if futures:
            await asyncio.wait(futures, timeout=ACK_TIMEOUT_S)
        failed = []
        for i, item in enumerate(batch):
            future = futures[i] if i < len(futures) else None
            if future is None or not future.done() or future.cancelled() or future.exception() is not None:
                failed.append(item)
            if future is not None and not future.done():
                future.cancel()
        return failed
