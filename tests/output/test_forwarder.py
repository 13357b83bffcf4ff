"""The publishing hop of several inference workers (`streamer.output.forwarder`), with real ZeroMQ sockets:
each worker's messages keep their order and seq, a worker that binds again is reconnected, CURVE applies on
the forwarder's endpoint."""

from __future__ import annotations

import time
from pathlib import Path

from streamer.config import PublishConfig
from streamer.output.client import ReceiveTimeout, Subscriber
from streamer.output.forwarder import Forwarder, worker_endpoint
from streamer.output.protocol import DetectionsMessage, Message
from streamer.output.publish import Publisher
from tests.output.test_curve import Keys
from tests.output.test_publish import det

TIMEOUT = 10.0


def _worker(folder: Path) -> Publisher:
    folder.mkdir(exist_ok=True)
    return Publisher(worker_endpoint(str(folder)))


def _receive(sub: Subscriber, n: int) -> list[Message]:
    got = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < n and time.monotonic() < deadline:
        try:
            got.append(sub.recv(timeout=0.5))
        except ReceiveTimeout:
            continue
    return got


def _connected(fwd: Forwarder, sub: Subscriber, *workers: Publisher) -> Subscriber:
    """Once the subscriber's subscriptions reached the forwarder and the forwarder's every worker."""
    assert fwd.publisher.wait_for_subscribers(len(sub.subscriptions), TIMEOUT)
    for w in workers:
        assert w.wait_for_subscribers(1, TIMEOUT)
    return sub


def test_two_workers_streams_arrive_complete_in_order_with_their_own_seq(tmp_path: Path) -> None:
    w0, w1 = _worker(tmp_path / "w0"), _worker(tmp_path / "w1")
    cfg = PublishConfig(endpoint=f"ipc://{tmp_path}/front.sock")
    fwd = Forwarder(cfg, [worker_endpoint(str(tmp_path / "w0")), worker_endpoint(str(tmp_path / "w1"))])
    try:
        with _connected(fwd, Subscriber(fwd.endpoint), w0, w1) as sub:
            for i in range(200):
                w0.publish(det("a", i))
                w1.publish(det("b", i))
                w1.publish(det("c", i))
            got = _receive(sub, 600)
        by_stream = {s: [m for m in got if m.stream == s] for s in "abc"}
        for s, msgs in by_stream.items():
            assert [m.seq for m in msgs] == list(range(200)), s
            assert [m.frame for m in msgs if isinstance(m, DetectionsMessage)] == list(range(200))
        assert fwd.forwarded == 600 and fwd.dropped == 0
    finally:
        fwd.close()
        w0.close()
        w1.close()


def test_a_worker_that_binds_again_is_reconnected_and_the_subscriber_stays(tmp_path: Path) -> None:
    folder = tmp_path / "w0"
    w0 = _worker(folder)
    fwd = Forwarder(PublishConfig(endpoint=f"ipc://{tmp_path}/front.sock"), [worker_endpoint(str(folder))])
    try:
        with _connected(fwd, Subscriber(fwd.endpoint), w0) as sub:
            w0.publish(det("a", 0))
            assert [m.seq for m in _receive(sub, 1)] == [0]
            w0.close()  # the worker dies; a new one binds the same endpoint and goes on numbering
            w0 = _worker(folder)
            w0.resume("a", 1)
            assert w0.wait_for_subscribers(1, TIMEOUT), "the forwarder did not reconnect"
            w0.publish(det("a", 1))
            got = _receive(sub, 1)
        assert [(m.stream, m.seq) for m in got] == [("a", 1)]
        assert fwd.subscribers == 2  # (det. and evt.: the subscriber never left)
    finally:
        fwd.close()
        w0.close()


def test_curve_applies_on_the_forwarders_endpoint(tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    w0 = _worker(tmp_path / "w0")
    fwd = Forwarder(keys.config(), [worker_endpoint(str(tmp_path / "w0"))])
    try:
        alice = _connected(fwd, Subscriber(fwd.endpoint, curve=keys.client("alice")), w0)
        plain = Subscriber(fwd.endpoint)
        try:
            for i in range(5):
                w0.publish(det("a", i))
            assert [m.seq for m in _receive(alice, 5)] == list(range(5))
            assert _receive_none(plain)
        finally:
            alice.close()
            plain.close()
    finally:
        fwd.close()
        w0.close()


def _receive_none(sub: Subscriber) -> bool:
    try:
        sub.recv(timeout=1.0)
    except ReceiveTimeout:
        return True
    return False
