"""The publisher, with real ZeroMQ sockets on loopback: ordering, sequence numbers, subscriptions, bind
errors, and the slow-subscriber guarantee (never block, never starve the others, count the drops)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from streamer.messages import EVENT_EOS, EVENT_STARTED
from streamer.output.client import Subscriber
from streamer.output.protocol import Detection, DetectionsMessage, EventMessage, decode
from streamer.output.publish import Publisher, PublishError

TIMEOUT = 5.0  # seconds; every receive in these tests is bounded


def det(stream: str, frame: int, n: int = 1, name: str = "person") -> DetectionsMessage:
    dets = [Detection(class_id=0, class_name=name, score=0.9, box=(1.0, 2.0, 3.0, 4.0))] * n
    return DetectionsMessage(
        stream=stream,
        frame=frame,
        pts=frame / 25,
        capture_ts=time.time(),
        width=64,
        height=48,
        detections=dets,
    )


def evt(stream: str, kind: str, message: str = "") -> EventMessage:
    return EventMessage(stream=stream, event=kind, message=message, ts=time.time())


@pytest.fixture
def pub() -> Iterator[Publisher]:
    with Publisher("tcp://127.0.0.1:*") as p:
        yield p


def subscribe(
    pub: Publisher,
    *,
    streams: list[str] | None = None,
    events: bool = True,
    detections: bool = True,
    rcv_hwm: int = 10000,
) -> Subscriber:
    """A connected subscriber: returns once the publisher has applied its subscriptions, so that no
    message published afterwards is lost to ZeroMQ's "slow joiner" effect."""
    before = pub.poll_subscriptions()
    sub = Subscriber(pub.endpoint, streams=streams, events=events, detections=detections, rcv_hwm=rcv_hwm)
    if not pub.wait_for_subscribers(before + len(sub.subscriptions), TIMEOUT):
        sub.close()
        raise AssertionError(f"subscriber did not connect to {pub.endpoint}")
    return sub


def test_endpoint_reports_the_chosen_port(pub: Publisher) -> None:
    assert pub.endpoint.startswith("tcp://127.0.0.1:")
    assert int(pub.endpoint.rsplit(":", 1)[1]) > 0


def test_subscriber_receives_detections_and_events_in_order(pub: Publisher) -> None:
    with subscribe(pub) as sub:
        sent: list[DetectionsMessage | EventMessage] = [evt("cam1", EVENT_STARTED, "opened")]
        sent += [det("cam1", i, n=i) for i in range(5)]
        sent += [evt("cam1", EVENT_EOS, "end of file")]
        for msg in sent:
            assert pub.publish(msg) is True
        got = [sub.recv(TIMEOUT) for _ in sent]
    assert got == sent
    assert [m.seq for m in got] == list(range(7))
    assert [m.type for m in got] == ["evt", "det", "det", "det", "det", "det", "evt"]
    assert all(isinstance(m, DetectionsMessage) and m.publish_ts >= m.capture_ts for m in got[1:6])
    assert sub.gaps == {"cam1": 0}
    assert (pub.sent, pub.dropped, pub.next_seq("cam1"), pub.next_seq("other")) == (7, 0, 7, 0)


def test_sequence_numbers_are_per_stream(pub: Publisher) -> None:
    with subscribe(pub) as sub:
        for i in range(3):
            pub.publish(det("a", i))
            pub.publish(det("b", i))
        pub.publish(evt("b", EVENT_EOS))
        got = [sub.recv(TIMEOUT) for _ in range(7)]
    assert [(m.stream, m.seq) for m in got] == [
        ("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("b", 3)
    ]  # fmt: skip
    assert sub.gaps == {"a": 0, "b": 0}


def test_msgpack_publisher() -> None:
    with Publisher("tcp://127.0.0.1:*", encoding="msgpack") as mp, subscribe(mp) as sub:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        raw = ctx.socket(zmq.SUB)
        raw.linger = 0
        raw.subscribe(b"")
        raw.connect(mp.endpoint)
        try:
            assert mp.wait_for_subscribers(3, TIMEOUT)
            mp.publish(det("cam1", 0, n=3))
            msg = sub.recv(TIMEOUT)
            assert raw.poll(int(TIMEOUT * 1000))
            topic, payload = raw.recv_multipart()
        finally:
            raw.close()
    assert topic == b"det.cam1" and payload[:1] != b"{"
    assert decode(topic, payload) == msg
    assert isinstance(msg, DetectionsMessage) and len(msg.detections) == 3


def test_messages_nobody_subscribes_to_are_not_drops(pub: Publisher) -> None:
    assert pub.subscribers == 0
    assert pub.publish(det("cam1", 0)) is True
    assert (pub.sent, pub.dropped, pub.next_seq("cam1")) == (1, 0, 1)


def test_subscriptions_are_counted_and_logged(pub: Publisher, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="streamer.output.publish")
    sub1 = subscribe(pub)  # det. and evt.
    sub2 = subscribe(pub, streams=["cam1"], events=False)  # det.cam1
    assert pub.subscribers == 3
    assert pub.subscriptions() == {"det.": 1, "evt.": 1, "det.cam1": 1}
    sub1.close()
    deadline = time.monotonic() + TIMEOUT
    while pub.poll_subscriptions(0.1) != 1 and time.monotonic() < deadline:
        pass
    assert pub.subscriptions() == {"det.cam1": 1}
    sub2.close()
    while pub.poll_subscriptions(0.1) != 0 and time.monotonic() < deadline:
        pass
    assert pub.subscribers == 0
    text = caplog.text
    assert "subscribed to 'det.cam1'" in text and "unsubscribed from 'det.'" in text


def test_bind_errors_name_the_endpoint(pub: Publisher) -> None:
    with pytest.raises(PublishError, match=r"tcp://127\.0\.0\.1:\d+.*cannot bind.*in use") as info:
        Publisher(pub.endpoint)
    assert isinstance(info.value, OSError) and info.value.endpoint == pub.endpoint
    with pytest.raises(PublishError, match=r"tcp://nonsense.*cannot bind"):
        Publisher("tcp://nonsense")
    with pytest.raises(PublishError, match="bogus://x"):
        Publisher("bogus://x")
    with pytest.raises(ValueError, match="encoding"):
        Publisher("tcp://127.0.0.1:*", encoding="xml")


def test_port_in_use_by_another_program() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(PublishError, match="in use"):
            Publisher(endpoint)


def test_ipc_endpoint(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/pub.sock"
    with Publisher(endpoint) as p, subscribe(p, streams=["x"]) as sub:
        assert p.endpoint == endpoint
        p.publish(evt("x", EVENT_EOS, "done"))
        msg = sub.recv(TIMEOUT)
    assert isinstance(msg, EventMessage) and msg.message == "done"


def test_from_config_without_curve() -> None:
    from streamer.config import PublishConfig

    cfg = PublishConfig(endpoint="tcp://127.0.0.1:*", encoding="msgpack", send_hwm=7)
    with Publisher.from_config(cfg) as p, subscribe(p) as sub:
        assert p.curve is None and p.encoding == "msgpack"
        assert p._sock.getsockopt(zmq.SNDHWM) == 7
        assert p._sock.getsockopt(zmq.MECHANISM) == zmq.NULL
        p.publish(det("cam1", 0))
        assert sub.recv(TIMEOUT).stream == "cam1"


def test_closed_publisher() -> None:
    p = Publisher("tcp://127.0.0.1:*")
    p.close()
    p.close()
    with pytest.raises(PublishError, match="closed"):
        p.publish(det("cam1", 0))


def test_invalid_messages_are_rejected_without_using_a_sequence_number(pub: Publisher) -> None:
    with pytest.raises(ValueError, match="event kind"):
        pub.publish(evt("cam1", "exploded"))
    with pytest.raises(ValueError, match="stream id"):
        pub.publish(det("cam 1", 0))
    assert pub.next_seq("cam1") == 0 and pub.sent == 0


def test_slow_subscriber_never_blocks_and_never_starves_the_others() -> None:
    """One subscriber never reads; the other reads everything.

    The payloads are ~10 kB, so that the stuck subscriber's TCP buffers fill and its queue on the
    publisher reaches the high-water mark (long class names keep encoding cheap: only the size matters
    here). The reading subscriber runs in a thread; the loop keeps at most `window` messages in flight to
    it, as a subscriber that keeps up with the daemon's frame rate would (without that, this loop
    publishes faster than any subscriber can read, and the reader would rightly miss messages too).
    `publish` itself never waits.
    """
    n, window, hwm = 20000, 64, 200
    with (
        Publisher("tcp://127.0.0.1:*", send_hwm=hwm) as p,
        subscribe(p, streams=["cam1"], rcv_hwm=10) as stuck,
        subscribe(p, streams=["cam1"]) as reader,
    ):
        got: list[int] = []
        failure: list[BaseException] = []

        def read() -> None:
            try:
                while len(got) < n:
                    got.append(reader.recv(TIMEOUT).seq)
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        big = det("cam1", 0, n=10, name="x" * 1000)
        delivered = 0
        worst = 0.0
        start = time.monotonic()
        for i in range(n):
            while i - len(got) > window and thread.is_alive():
                time.sleep(0.0001)
            big.frame = i
            t0 = time.perf_counter()
            delivered += p.publish(big)
            worst = max(worst, time.perf_counter() - t0)
        elapsed = time.monotonic() - start
        thread.join(TIMEOUT)
        assert not failure, failure
        assert got == list(range(n)), "the reading subscriber missed messages"
        assert reader.gaps == {"cam1": 0}
        assert p.dropped > 0 and delivered == n - p.dropped and p.sent == n
        assert elapsed < 20, f"publishing took {elapsed:.1f} s"
        assert worst < 1.0, f"one publish() took {worst:.3f} s"

        # The stuck subscriber got the start and missed the rest; once it reads again, it sees the loss.
        stuck_seqs: list[int] = []
        with pytest.raises(TimeoutError):
            while True:
                stuck_seqs.append(stuck.recv(0.5).seq)
        assert 0 < len(stuck_seqs) < n and stuck_seqs[:10] == list(range(10))
        p.publish(evt("cam1", EVENT_EOS, "end"))
        assert stuck.recv(TIMEOUT).seq == n
        assert stuck.gaps["cam1"] == n - len(stuck_seqs)
        # The publisher counts each overflow once; the subscriber's gaps are the exact loss.
        assert p.dropped <= stuck.gaps["cam1"]
