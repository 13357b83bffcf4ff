"""Subscriber library: receive yolostream detections and events in your own program.

Example::

    from streamer.output.client import Subscriber

    with Subscriber("tcp://127.0.0.1:5555", streams=["cam1"]) as sub:
        for msg in sub:
            if msg.type == "det":
                for d in msg.detections:
                    print(msg.stream, msg.frame, d.class_name, d.score, d.box)
            else:
                print(msg.stream, "event", msg.event, msg.message)

With CURVE (a publisher whose config sets ``publish.curve``), pass the keys::

    from streamer.output.client import CurveClient, Subscriber

    curve = CurveClient.from_files("server.key", "client.key_secret")
    with Subscriber("tcp://10.0.0.5:5555", curve=curve) as sub:
        ...

The ``yolostream subscribe`` command prints what a `Subscriber` receives (`streamer.cli.subscribe`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from types import TracebackType

import zmq
from zmq.utils.monitor import recv_monitor_message

from streamer.errors import YolostreamError
from streamer.output.protocol import (
    ANA_PREFIX,
    DET_PREFIX,
    EVT_PREFIX,
    AnalyticsMessage,
    DetectionsMessage,
    EventMessage,
    Message,
    ProtocolError,
    decode,
    topic_for,
)
from streamer.output.security import CurveClient

__all__ = [
    "CurveClient",
    "DetectionsMessage",
    "EventMessage",
    "ProtocolError",
    "ReceiveTimeout",
    "SubscribeError",
    "Subscriber",
    "handshake_problem",
]

log = logging.getLogger(__name__)

POLL_SLICE_MS = 1000  # a wait "for ever" polls in slices of this: see Subscriber.recv


_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_MECHANISM_MISMATCH = 0x11000002  # ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH


class ReceiveTimeout(YolostreamError, TimeoutError):
    """No message arrived within the timeout given to `Subscriber.recv`."""


class SubscribeError(YolostreamError, OSError):
    """The subscriber socket could not connect to the endpoint or failed while receiving."""


def handshake_problem(event: int, value: int, curve: bool) -> str | None:
    """What a failed handshake (a socket monitor `event` and its `value`) means, for a person; None when
    `event` is not a handshake failure.

    Parameters:
        event: a ``zmq.EVENT_HANDSHAKE_*`` value.
        value: the event's value (an HTTP-like status, a protocol error or an errno).
        curve: whether this side used CURVE.
    """
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"the publisher refused this subscriber's CURVE key (status {value}): its public key is not "
            "among the publisher's authorised clients"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MECHANISM_MISMATCH:
        if curve:
            return "the publisher does not use CURVE: connect without keys"
        return (
            "the publisher requires CURVE: give its public key and a client key "
            "(--server-key FILE --client-key FILE)"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return f"ZeroMQ protocol error {value:#x} in the handshake with the publisher"
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if curve:
            return (
                "the CURVE handshake failed: is the server key the publisher's (its server.key), "
                "and does the publisher use CURVE?"
            )
        why = os.strerror(value) if value else "no detail"
        return (
            f"the publisher closed the connection during the handshake ({why}): it probably requires CURVE; "
            "give its public key and a client key (--server-key FILE --client-key FILE)"
        )
    return None


class Subscriber:
    """Receives the messages of a yolostream publisher.

    Subscribing is a prefix match in ZeroMQ (``det.cam1`` also matches ``det.cam10``), so when `streams`
    are given the subscriber also checks each topic exactly and skips the others.

    ZeroMQ connects in the background: a publisher that is not running yet is not an error, and messages
    published before the connection is made are not received. A handshake that fails (a CURVE key the
    publisher refuses, a wrong server key, keys missing or given in vain) is not an error either, since the
    subscriber keeps trying: it is logged once as a warning, kept in `handshake_error`, and named in the
    `ReceiveTimeout` that `recv` raises. Not thread-safe (one thread per `Subscriber`).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        streams: Iterable[str] | None = None,
        events: bool = True,
        detections: bool = True,
        analytics: bool = False,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        rcv_hwm: int = 10000,
        curve: CurveClient | None = None,
        server_public_key: bytes | str | None = None,
        client_secret_key: bytes | str | None = None,
        client_public_key: bytes | str | None = None,
    ) -> None:
        """Connect to a publisher.

        Parameters:
            endpoint: the publisher's endpoint, e.g. ``tcp://127.0.0.1:5555``.
            streams: stream ids to receive; None for every stream.
            events: receive ``evt.<stream>`` messages (started, eos, error, dropped).
            detections: receive ``det.<stream>`` messages.
            analytics: receive ``ana.<stream>`` messages (zones and lines; off by default, so that code
                written for detections and events gets no other kind).
            context: ZeroMQ context; the process-wide one by default.
            rcv_hwm: messages queued on this side before the publisher starts skipping this subscriber.
            curve: CURVE keys, for a publisher that uses CURVE (`CurveClient.from_files`).
            server_public_key: instead of `curve`, the keys as Z85 text: the publisher's public key...
            client_secret_key: ...this subscriber's secret key (None: a throwaway key pair, which only a
                publisher with ``allow_any_client`` admits)...
            client_public_key: ...and its public key (derived from the secret key when None).

        Raises:
            ValueError: an invalid stream id, neither events nor detections asked for, both `curve` and
                keys given, client keys without the server's, or a malformed key.
            SubscribeError: the endpoint is malformed or its transport unsupported.
        """
        if not (events or detections or analytics):
            raise ValueError("subscribe to events, detections or analytics")
        if server_public_key is not None:
            if curve is not None:
                raise ValueError("give either curve or the keys (server_public_key, ...), not both")
            curve = CurveClient.from_keys(server_public_key, client_secret_key, client_public_key)
        elif client_secret_key is not None or client_public_key is not None:
            raise ValueError("client keys without server_public_key: CURVE needs the publisher's public key")
        self.curve = curve
        """The CURVE keys in use, or None."""
        self.handshake_error: str | None = None
        """Why the last handshake with the publisher failed; None once one has succeeded (or none failed)."""
        kinds = ((DET_PREFIX, detections), (EVT_PREFIX, events), (ANA_PREFIX, analytics))
        prefixes = [p for p, wanted in kinds if wanted]
        self.streams: tuple[str, ...] | None = None if streams is None else tuple(dict.fromkeys(streams))
        if self.streams is None:
            subscriptions = [p.encode("ascii") for p in prefixes]
            self._exact: frozenset[bytes] | None = None
        else:
            if not self.streams:
                raise ValueError("streams is empty; pass None to receive every stream")
            subscriptions = [topic_for(p, s) for s in self.streams for p in prefixes]
            self._exact = frozenset(subscriptions)
        self.subscriptions: tuple[bytes, ...] = tuple(subscriptions)
        """The topic prefixes this subscriber subscribes to (each counts once in `Publisher.subscribers`)."""
        # Sequence numbers are shared by a stream's detections and events: gaps can be counted only when
        # both are received.
        self._count_gaps = events and detections
        self.gaps: dict[str, int] = {}
        """Per stream, messages missed according to ``seq`` (counted only when receiving both kinds);
        analytics messages, numbered apart, under ``ana.<stream>``."""
        self.received = 0
        """Messages returned by `recv`."""
        self._last_seq: dict[str, int] = {}
        self.endpoint = endpoint
        ctx = context if context is not None else zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        monitor = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, rcv_hwm)
            if curve is not None:
                curve.apply(sock)
            for topic in subscriptions:
                sock.setsockopt(zmq.SUBSCRIBE, topic)
            monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
            monitor.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            if monitor is not None:
                sock.disable_monitor()
                monitor.close(linger=0)
            sock.close(linger=0)
            raise SubscribeError(exc.errno, f"cannot connect to {endpoint}: {exc.strerror}") from None
        self._sock = sock
        self._monitor = monitor
        self._poller = zmq.Poller()
        self._poller.register(sock, zmq.POLLIN)
        self._poller.register(monitor, zmq.POLLIN)
        self._warned: set[str] = set()
        self._vague = 0
        self._closed = False

    def recv(self, timeout: float | None = None) -> Message:
        """Receive the next message.

        Parameters:
            timeout: seconds to wait at most; None waits for ever.

        Returns:
            A `DetectionsMessage` (``msg.type == "det"``) or an `EventMessage` (``msg.type == "evt"``).

        Raises:
            ReceiveTimeout: nothing arrived within `timeout` (a `TimeoutError`).
            ProtocolError: a message could not be decoded (it is consumed; the next call goes on).
            SubscribeError: the subscriber is closed or its socket failed.
        """
        if self._closed:
            raise SubscribeError(f"recv() on a closed subscriber of {self.endpoint}")
        deadline = None if timeout is None else time.monotonic() + timeout
        sock = self._sock
        while True:
            try:
                if deadline is None:
                    # In slices: a signal (Ctrl-C) that lands just before libzmq blocks is only acted on when
                    # the poll returns, so a poll without a timeout could miss it for ever.
                    ready = dict(self._poller.poll(POLL_SLICE_MS))
                else:
                    left = deadline - time.monotonic()
                    ready = dict(self._poller.poll(max(1, round(left * 1000)))) if left > 0 else {}
                if self._monitor in ready:
                    self._read_monitor()
                if sock not in ready:
                    if deadline is not None and time.monotonic() >= deadline:
                        why = f": {self.handshake_error}" if self.handshake_error else ""
                        raise ReceiveTimeout(f"no message from {self.endpoint} within {timeout:g} s{why}")
                    continue
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            except zmq.ZMQError as exc:
                raise SubscribeError(exc.errno, f"receiving from {self.endpoint}: {exc.strerror}") from None
            if self._exact is not None and parts[0] not in self._exact:
                continue  # a longer stream id that only shares our prefix
            if len(parts) != 2:
                raise ProtocolError(
                    f"expected a 2-part message [topic, payload] from {self.endpoint}, got {len(parts)} parts"
                )
            msg = decode(parts[0], parts[1])
            self._track(msg)
            self.received += 1
            return msg

    def _read_monitor(self) -> None:
        """Note the handshake events of the socket monitor (a failure is logged once per kind)."""
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                if self.handshake_error is not None:
                    log.info("connected to %s", self.endpoint)
                self.handshake_error = None
                self._vague = 0
                continue
            problem = handshake_problem(event["event"], event["value"], self.curve is not None)
            if problem is None:
                continue
            if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                # Vague, and often just before a precise reason: never replaces one, and is logged only
                # when it repeats.
                self._vague += 1
                if self.handshake_error is None:
                    self.handshake_error = problem
                if self.handshake_error != problem or self._vague < 3:
                    continue
            else:
                self.handshake_error = problem
            if problem not in self._warned:
                self._warned.add(problem)
                log.warning("%s: %s", self.endpoint, problem)

    def _track(self, msg: Message) -> None:
        analytics = isinstance(msg, AnalyticsMessage)
        stream, seq = (ANA_PREFIX + msg.stream if analytics else msg.stream), msg.seq
        last = self._last_seq.get(stream)
        self._last_seq[stream] = seq
        if not (self._count_gaps or analytics):
            return
        missed = self.gaps.setdefault(stream, 0)
        if last is None:
            return
        if seq > last + 1:
            self.gaps[stream] = missed + seq - last - 1
            log.debug("stream %s: missed %d message(s) before seq %d", stream, seq - last - 1, seq)
        elif seq <= last:
            log.info("stream %s: sequence restarted at %d (the publisher restarted?)", stream, seq)

    def __iter__(self) -> Iterator[Message]:
        """Yield messages for ever (until the subscriber is closed or an error is raised)."""
        while True:
            yield self.recv()

    def close(self) -> None:
        """Close the socket at once. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._sock.close(linger=0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
