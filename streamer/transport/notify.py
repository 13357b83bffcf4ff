"""Small notifications from source workers and the supervisor to the inference worker.

A ZeroMQ PUSH → PULL pipe over ``ipc://`` carrying `streamer.messages.Notification` records encoded as
MessagePack. The inference worker binds; every other process connects (connecting before the bind is
fine, ZeroMQ retries). Sends never block: a full queue means the inference worker is gone or hopelessly
behind, and the caller decides what to drop.
"""

from __future__ import annotations

import msgspec
import zmq

from streamer.messages import Notification

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Notification)


class NotifySender:
    """The connecting end (source workers, supervisor)."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None, hwm: int = 10_000) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        # On close, give queued notifications (end of stream, exit) up to 2 s to reach the reader.
        self._sock.setsockopt(zmq.LINGER, 2000)
        self._sock.connect(endpoint)

    def send(self, msg: Notification) -> bool:
        """Queue `msg`; False (nothing sent) when the queue is full."""
        try:
            self._sock.send(_encoder.encode(msg), zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        self._sock.close()


class NotifyReceiver:
    """The binding end, owned by the inference worker."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, 0)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)

    @property
    def socket(self) -> zmq.Socket:
        """The PULL socket, for registering in a `zmq.Poller` beside other sources of wake-ups."""
        return self._sock

    def recv(self, timeout: float | None) -> Notification | None:
        """The next notification, waiting up to `timeout` seconds (None: forever); None on timeout."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        if not self._sock.poll(ms, zmq.POLLIN):
            return None
        return _decoder.decode(self._sock.recv())

    def recv_nowait(self) -> Notification | None:
        try:
            return _decoder.decode(self._sock.recv(zmq.NOBLOCK))
        except zmq.Again:
            return None

    def close(self) -> None:
        self._sock.close()
