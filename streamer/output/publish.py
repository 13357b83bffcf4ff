"""The ZeroMQ publisher: sends every message to every subscriber without ever blocking the daemon.

A plain PUB socket drops messages for a slow subscriber silently. `Publisher` uses an XPUB socket with
``XPUB_NODROP`` set, so that a non-blocking send fails with ``zmq.Again`` when a subscriber's queue is full
instead of dropping in silence. On ``Again`` it counts a drop and sends the message again with
``XPUB_NODROP`` off: ZeroMQ then delivers it to every subscriber whose queue has room and skips the full
one. The daemon never waits, and one stuck subscriber never costs the others a message
(``tests/output/test_publish.py`` checks both with real sockets).

One libzmq detail makes this work only with care: the socket learns how much each subscriber has read from
notices that it processes at most about once a millisecond while sending. With a stale view a subscriber
that keeps up can look full, and the lossy send would then skip it too. `Publisher` therefore reads
``ZMQ_EVENTS`` (which processes the notices) before each send and again before concluding that a queue is
full.

What the drop counter can and cannot see: once ZeroMQ has skipped a full subscriber, it sets that
subscriber's queue aside until the subscriber has read half of it, and later sends pass it over without
raising ``Again``. So `Publisher.dropped` counts the messages at which a subscriber's queue was found
full (the start of each overflow), not every message that subscriber missed; the subscriber itself sees
the exact number as gaps in ``seq`` (`streamer.output.client.Subscriber.gaps`).

The XPUB socket also receives the subscribers' (un)subscriptions. `Publisher` reads them without blocking
whenever it publishes (so they never pile up), keeps a count of the active subscriptions and logs them.

With CURVE (`curve=`, or ``publish.curve`` in the config through `Publisher.from_config`) the socket is a
CURVE server, and a ZAP handler in the publisher's own ZeroMQ context admits only authorised subscriber
keys (`streamer.output.security`). Without CURVE, binding an address that other hosts can reach is logged as a
warning: anyone who can connect receives the detections, unencrypted.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, cast

import zmq

from streamer.errors import YolostreamError
from streamer.output.protocol import (
    ANA_PREFIX,
    ENCODINGS,
    AnalyticsMessage,
    DetectionsMessage,
    Message,
    encode,
)
from streamer.output.security import CurveServer, is_local_endpoint, start_authenticator

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

    from streamer.config import PublishConfig

log = logging.getLogger(__name__)

_DROP_LOG_INTERVAL = 10.0  # seconds between warnings about a subscriber that is not keeping up


class Mirror(Protocol):
    """Where every published message also goes (fleet mode: `streamer.fleet.durable.DurableSink`)."""

    def put(self, topic: bytes, payload: bytes, stream: str, seq: int) -> None: ...


class PublishError(YolostreamError, OSError):
    """The publisher could not bind its endpoint or send (the message names the endpoint)."""

    def __init__(self, endpoint: str, message: str, errno: int | None = None) -> None:
        self.endpoint = endpoint
        text = f"ZeroMQ publisher on {endpoint}: {message}"
        if errno is None:
            super().__init__(text)
        else:
            super().__init__(errno, text)


def _describe(topic: bytes) -> str:
    return repr(topic.decode("utf-8", "replace")) if topic else "everything"


class Publisher:
    """Publishes `streamer.output.protocol` messages on a bound XPUB socket.

    Not thread-safe: use one `Publisher` from one thread (the inference worker's).

    `publish` assigns each message its stream's next sequence number (``seq``, 0-based and consecutive
    over the stream's detections and events) and its ``publish_ts``; callers leave both at their defaults.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        encoding: str = "json",
        send_hwm: int = 1000,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        curve: CurveServer | None = None,
        mirror: Mirror | None = None,
    ) -> None:
        """Bind a publisher.

        Parameters:
            endpoint: ZeroMQ endpoint to bind, e.g. ``tcp://127.0.0.1:5555``, ``tcp://*:5555``,
                ``ipc:///run/yolostream.sock``; ``tcp://127.0.0.1:*`` picks a free port (see `endpoint`).
            encoding: payload encoding, ``"json"`` or ``"msgpack"``.
            send_hwm: messages queued per subscriber before that subscriber starts missing messages.
            context: ZeroMQ context; the process-wide one by default. With `curve` the publisher starts
                the context's ZAP handler (one per context), so by default it makes a context of its own.
            curve: CURVE keys and policy (`CurveServer.from_config`); None publishes in plaintext.
            mirror: also hands every encoded message to this (never blocking), e.g. JetStream's sink.

        Raises:
            ValueError: unknown encoding or a non-positive `send_hwm`.
            PublishError: the endpoint cannot be bound (address in use, malformed endpoint, ...), or the
                context given already has a ZAP handler.
        """
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")
        if send_hwm < 1:
            raise ValueError(f"send_hwm must be at least 1, got {send_hwm}")
        self.encoding = encoding
        self._seq: dict[str, int] = {}
        self._subscriptions: Counter[bytes] = Counter()
        self._sent = 0
        self._dropped = 0
        self._drop_logged = -_DROP_LOG_INTERVAL
        self._closed = False
        self.curve = curve
        """The CURVE keys and policy, or None (plaintext)."""
        self.mirror = mirror
        self._own_context: zmq.Context[zmq.Socket[bytes]] | None = None
        self._auth: ThreadAuthenticator | None = None
        if context is not None:
            ctx = context
        elif curve is not None:
            ctx = self._own_context = zmq.Context()
        else:
            ctx = zmq.Context.instance()
        sock = None
        try:
            if curve is not None:
                self._auth = start_authenticator(ctx, curve)
            sock = ctx.socket(zmq.XPUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, send_hwm)
            sock.setsockopt(zmq.XPUB_NODROP, 1)
            # Pass every subscribe and unsubscribe up (also duplicates, and those of a subscriber that
            # disconnects), so that the count of active subscriptions is exact.
            sock.setsockopt(zmq.XPUB_VERBOSER, 1)
            if curve is not None:
                curve.apply(sock)
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            if sock is None:  # the ZAP handler could not start
                message = f"cannot start the CURVE authenticator: {exc.strerror}"
                if exc.errno == zmq.EADDRINUSE:
                    message += " (this ZeroMQ context already has one: give the publisher its own)"
            else:
                sock.close(linger=0)
                message = f"cannot bind: {exc.strerror}"
            self._close_security()
            raise PublishError(endpoint, message, exc.errno) from None
        self._sock = sock
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        self.endpoint: str = last.decode() if isinstance(last, bytes) and last else endpoint
        """The bound endpoint, with the port ZeroMQ chose for a ``*`` port."""
        if curve is None:
            log.info("publishing %s messages on %s", encoding, self.endpoint)
            if not is_local_endpoint(self.endpoint):
                log.warning(
                    "%s can be reached from other hosts and publish.curve is not set: anyone who can "
                    "connect receives the detections, unencrypted (see docs/security.md)",
                    self.endpoint,
                )
        else:
            admitted = (
                "any subscriber with the server key"
                if curve.clients is None
                else f"{len(curve.clients.keys)} authorised subscriber key(s)"
            )
            log.info(
                "publishing %s messages on %s with CURVE, admitting %s", encoding, self.endpoint, admitted
            )

    @classmethod
    def from_config(
        cls,
        cfg: PublishConfig,
        *,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        mirror: Mirror | None = None,
    ) -> Publisher:
        """Bind the publisher that a config's ``publish`` section describes (reading its CURVE key files).

        Raises:
            KeyFileError: a CURVE key file is missing, unreadable or invalid (the message names it).
            PublishError: as the constructor.
        """
        curve = CurveServer.from_config(cfg.curve) if cfg.curve is not None else None
        return cls(
            cfg.endpoint, encoding=cfg.encoding, send_hwm=cfg.send_hwm, context=context, curve=curve,
            mirror=mirror,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------ state

    @property
    def sent(self) -> int:
        """Messages handed to ZeroMQ (including those that some subscriber missed)."""
        return self._sent

    @property
    def dropped(self) -> int:
        """Messages at which some subscriber's queue was found full (see the module docstring)."""
        return self._dropped

    @property
    def subscribers(self) -> int:
        """Active subscriptions, as of the last (un)subscription read.

        A subscriber counts once per topic prefix it subscribes to (`streamer.output.client.Subscriber`
        makes two per stream it names, or two in all); 0 means nobody is listening.
        """
        return sum(self._subscriptions.values())

    def subscriptions(self) -> dict[str, int]:
        """Active subscriptions by topic prefix (``""`` for a subscription to everything)."""
        return {topic.decode("utf-8", "replace"): n for topic, n in self._subscriptions.items()}

    def next_seq(self, stream: str) -> int:
        """The sequence number that the next message of `stream` will be given by `publish`."""
        return self._seq.get(stream, 0)

    def resume(self, stream: str, seq: int) -> None:
        """Number `stream`'s next message `seq`: a replaced inference worker's streams go on, never back."""
        self._seq[stream] = max(seq, self._seq.get(stream, 0))

    # ---------------------------------------------------------------------------------------- sending

    def publish(self, msg: Message) -> bool:
        """Send one message to every subscriber of its topic, never blocking.

        Sets ``msg.seq`` to the stream's next sequence number and, for detections, ``msg.publish_ts``
        to the current time.

        Parameters:
            msg: a `DetectionsMessage` or `EventMessage`.

        Returns:
            True if every matching subscriber's queue had room; False if one was full, so that subscriber
            misses this message (counted in `dropped`). Messages nobody subscribes to are discarded by
            ZeroMQ and return True.

        Raises:
            ValueError: the message has an invalid stream id or event kind.
            PublishError: the socket failed (closed publisher, terminated context).
        """
        if self._closed:
            raise PublishError(self.endpoint, "publish() on a closed publisher")
        # Reading ZMQ_EVENTS (done here while draining subscriptions) also makes libzmq process the notices
        # of how much each subscriber has read, so that the high-water-mark check below is up to date.
        self._read_subscriptions()
        # Analytics messages count apart, so that a subscriber of detections and events sees no gaps
        # for them (a stream id has no '.', so the key cannot be another stream's).
        key = ANA_PREFIX + msg.stream if isinstance(msg, AnalyticsMessage) else msg.stream
        seq = self._seq.get(key, 0)
        msg.seq = seq
        if isinstance(msg, (DetectionsMessage, AnalyticsMessage)):
            msg.publish_ts = time.time()
        parts = encode(msg, self.encoding)
        if self.mirror is not None:
            self.mirror.put(parts[0], parts[1], msg.stream, seq)
        try:
            delivered = self._send(parts)
        except zmq.ZMQError as exc:
            raise PublishError(self.endpoint, f"send failed: {exc.strerror}", exc.errno) from None
        self._seq[key] = seq + 1
        self._sent += 1
        return delivered

    def forward(self, parts: list[bytes]) -> bool:
        """Send a message encoded and numbered by another `Publisher` (`streamer.output.forwarder`'s hop), as
        `publish` sends: never blocking, a full subscriber queue counted in `dropped`."""
        if self._closed:
            raise PublishError(self.endpoint, "forward() on a closed publisher")
        self._read_subscriptions()
        try:
            delivered = self._send(parts)
        except zmq.ZMQError as exc:
            raise PublishError(self.endpoint, f"send failed: {exc.strerror}", exc.errno) from None
        self._sent += 1
        return delivered

    def _send(self, parts: tuple[bytes, bytes] | list[bytes]) -> bool:
        sock = self._sock
        try:
            sock.send_multipart(parts, zmq.NOBLOCK)
            return True
        except zmq.Again:
            pass
        # A subscriber's queue looks full. The socket's view of how much each subscriber has read may be
        # stale (libzmq processes those notices at most about once a millisecond while sending); bring it
        # up to date and try again before concluding that the subscriber is behind.
        self._read_subscriptions()
        try:
            sock.send_multipart(parts, zmq.NOBLOCK)
            return True
        except zmq.Again:
            pass
        # It is full. Send in lossy mode: ZeroMQ delivers to every subscriber with room and skips the full
        # one, without blocking.
        self._dropped += 1
        sock.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            sock.send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:  # (a lossy send does not raise it; kept so that no libzmq version can block us)
            pass
        finally:
            sock.setsockopt(zmq.XPUB_NODROP, 1)
        now = time.monotonic()
        if now - self._drop_logged >= _DROP_LOG_INTERVAL:
            self._drop_logged = now
            log.warning(
                "a subscriber of %s is not keeping up and misses messages (%d overflow(s) so far)",
                self.endpoint,
                self._dropped,
            )
        return False

    # ---------------------------------------------------------------------------------- subscriptions

    def poll_subscriptions(self, timeout: float = 0.0) -> int:
        """Read pending (un)subscriptions, waiting up to `timeout` seconds for the first one.

        Parameters:
            timeout: seconds to wait when none is pending; 0 does not wait.

        Returns:
            The number of active subscriptions (`subscribers`).
        """
        if not self._closed and timeout > 0 and not self._sock.poll(int(timeout * 1000), zmq.POLLIN):
            return self.subscribers
        self._read_subscriptions()
        return self.subscribers

    def wait_for_subscribers(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least `count` subscriptions are active.

        A subscription counts once ZeroMQ has applied it, so every message published afterwards reaches
        that subscriber (this is how tests and tools avoid the "slow joiner" loss of the first messages).

        Parameters:
            count: subscriptions to wait for.
            timeout: seconds to wait at most.

        Returns:
            True if `count` subscriptions are active, False on timeout.

        Raises:
            PublishError: the publisher is closed.
        """
        if self._closed:
            raise PublishError(self.endpoint, "wait_for_subscribers() on a closed publisher")
        deadline = time.monotonic() + timeout
        while self.poll_subscriptions() < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.poll_subscriptions(min(left, 0.1))
        return True

    def _read_subscriptions(self) -> None:
        sock = self._sock
        if self._closed:
            return
        while cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not data or data[0] not in (0, 1):
                log.debug("ignoring a %d-byte message that is not a subscription", len(data))
                continue
            topic = data[1:]
            if data[0] == 1:
                self._subscriptions[topic] += 1
                log.info(
                    "a subscriber subscribed to %s on %s (%d active subscription(s))",
                    _describe(topic),
                    self.endpoint,
                    self.subscribers,
                )
            elif self._subscriptions[topic] > 0:
                self._subscriptions[topic] -= 1
                if not self._subscriptions[topic]:
                    del self._subscriptions[topic]
                log.info(
                    "a subscriber unsubscribed from %s on %s (%d active subscription(s))",
                    _describe(topic),
                    self.endpoint,
                    self.subscribers,
                )

    # ---------------------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Close the socket at once (queued messages are discarded). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._sock.close(linger=0)
        self._close_security()
        log.debug("publisher on %s closed (%d sent, %d dropped)", self.endpoint, self._sent, self._dropped)

    def _close_security(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_context is not None:
            self._own_context.term()
            self._own_context = None

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
