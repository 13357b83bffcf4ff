"""The publishing hop of a daemon with several inference workers (``engine.devices``).

Only one socket can bind ``publish.endpoint``. With several inference workers each binds a `Publisher` on
an ``ipc://`` endpoint of its own in the run directory (a private, 0700 folder: no CURVE on this hop), and
the supervisor runs a `Forwarder` in a thread of its own: one XSUB socket, subscribed to everything,
connected to every worker's endpoint, and a `Publisher` bound on ``publish.endpoint`` (with CURVE as
configured) that relays each message as it came (`Publisher.forward`).

- A stream's messages come from the one worker that carries it, numbered there (``seq``) and relayed in
  order: ZeroMQ keeps the order of one connection.
- A worker that restarts binds its endpoint again and the XSUB reconnects by itself; the subscribers stay
  connected to the forwarder and never see the restart as a reconnection.
- A subscriber that does not keep up is handled as by a worker's publisher (never blocking, counted).
- The worker sees exactly one subscription (the forwarder's), so a restarted worker's wait for its
  predecessor's subscribers (`streamer.workers.reporting`) waits for the forwarder to be back.

With one inference worker there is no forwarder: it binds ``publish.endpoint`` itself, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import zmq

from streamer.output.publish import Publisher, PublishError

if TYPE_CHECKING:
    from streamer.config import PublishConfig

log = logging.getLogger(__name__)

BURST = 256
"""Messages relayed per turn before the subscriptions are read again."""
DRAIN_S = 0.5
"""At close, how long the forwarder goes on relaying what the workers sent last."""


def worker_endpoint(run_dir: str) -> str:
    """The endpoint an inference worker behind a forwarder binds: in its own folder of the run dir."""
    return f"ipc://{run_dir}/publish.sock"


class Forwarder:
    """Relays the inference workers' messages to the subscribers of ``publish.endpoint``.

    Parameters:
        cfg: the ``publish`` section (endpoint, encoding, high-water mark, CURVE).
        upstream: the workers' endpoints (`worker_endpoint`); they may be bound later, or again.

    Raises:
        PublishError, KeyFileError: as `Publisher.from_config` (the endpoint cannot be bound, a key file).
    """

    def __init__(self, cfg: PublishConfig, upstream: list[str]) -> None:
        self.publisher = Publisher.from_config(cfg)
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._xsub = context.socket(zmq.XSUB)
        self._xsub.setsockopt(zmq.LINGER, 0)
        self._xsub.setsockopt(zmq.RCVHWM, cfg.send_hwm)
        for endpoint in upstream:
            self._xsub.connect(endpoint)
        self._xsub.send(b"\x01")  # subscribe to everything; the subscribers' own topics are applied here
        self.forwarded = 0
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="publish-forwarder", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return self.publisher.endpoint

    @property
    def subscribers(self) -> int:
        return self.publisher.subscribers

    @property
    def dropped(self) -> int:
        return self.publisher.dropped

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._xsub.poll(100, zmq.POLLIN):
                    self._relay()
                self.publisher.poll_subscriptions()
            deadline = time.monotonic() + DRAIN_S  # what the workers sent before they exited
            while time.monotonic() < deadline and self._xsub.poll(50, zmq.POLLIN):
                self._relay()
        except (zmq.ZMQError, PublishError) as exc:  # (a closed context while stopping)
            self._error = exc
            log.error("the publish forwarder stopped: %s", exc)

    def _relay(self) -> None:
        for _ in range(BURST):
            try:
                parts = self._xsub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.publisher.forward(parts)
            self.forwarded += 1

    def close(self) -> None:
        """Relay what is still on its way (up to `DRAIN_S`), then close both sockets."""
        self._stop.set()
        self._thread.join(DRAIN_S + 5)
        self._xsub.close(linger=0)
        self.publisher.close()
        log.debug("publish forwarder closed (%d messages relayed)", self.forwarded)


__all__ = ["Forwarder", "worker_endpoint"]
