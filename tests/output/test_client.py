"""The subscriber library, against real publishers on loopback (its command: tests/cli/test_subscribe.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from streamer.messages import EVENT_STARTED
from streamer.output.client import (
    CurveClient,
    ReceiveTimeout,
    SubscribeError,
    Subscriber,
    handshake_problem,
)
from streamer.output.protocol import (
    DetectionsMessage,
    EventMessage,
    ProtocolError,
    encode,
)
from streamer.output.publish import Publisher
from tests.support.pubsub import TIMEOUT, det, evt, wait_subscribed


@pytest.fixture
def pub() -> Iterator[Publisher]:
    with Publisher("tcp://127.0.0.1:*") as p:
        yield p


def drain(sub: Subscriber, wait: float = 0.2) -> list[DetectionsMessage | EventMessage]:
    """Everything `sub` receives until nothing arrives for `wait` seconds."""
    got: list[DetectionsMessage | EventMessage] = []
    while True:
        try:
            got.append(sub.recv(wait))
        except ReceiveTimeout:
            return got


# ------------------------------------------------------------------------------------------ Subscriber


def test_stream_filter_is_exact(pub: Publisher) -> None:
    with Subscriber(pub.endpoint, streams=["cam1"]) as sub:
        assert sub.subscriptions == (b"det.cam1", b"evt.cam1")
        wait_subscribed(pub, 2)
        for i in range(3):
            pub.publish(det("cam10", i))
            pub.publish(det("cam1", i))
            pub.publish(det("cam1x", i))
        pub.publish(evt("cam10"))
        pub.publish(evt("cam1"))
        got = drain(sub)
    assert [(m.stream, m.type, m.seq) for m in got] == [
        ("cam1", "det", 0), ("cam1", "det", 1), ("cam1", "det", 2), ("cam1", "evt", 3)
    ]  # fmt: skip
    assert sub.gaps == {"cam1": 0}
    assert sub.received == 4


def test_several_streams(pub: Publisher) -> None:
    with Subscriber(pub.endpoint, streams=["a", "b"]) as sub:
        wait_subscribed(pub, 4)
        for s in ("a", "b", "c", "a"):
            pub.publish(det(s, 0))
        assert [m.stream for m in drain(sub)] == ["a", "b", "a"]


@pytest.mark.parametrize(
    ("events", "detections", "every_expected", "one_expected"),
    [
        (False, True, [("det", "cam1"), ("det", "cam2")], [("det", "cam1")]),
        (True, False, [("evt", "cam1"), ("evt", "cam1")], [("evt", "cam1"), ("evt", "cam1")]),
    ],
    ids=["detections-only", "events-only"],
)
def test_events_and_detections_toggles(
    pub: Publisher,
    events: bool,
    detections: bool,
    every_expected: list[tuple[str, str]],
    one_expected: list[tuple[str, str]],
) -> None:
    with (
        Subscriber(pub.endpoint, events=events, detections=detections) as every_stream,
        Subscriber(pub.endpoint, streams=["cam1"], events=events, detections=detections) as one_stream,
    ):
        assert len(every_stream.subscriptions) == len(one_stream.subscriptions) == 1
        wait_subscribed(pub, 2)
        pub.publish(evt("cam1", EVENT_STARTED, "opened"))
        pub.publish(det("cam1", 0))
        pub.publish(det("cam2", 0))
        pub.publish(evt("cam1"))
        assert [(m.type, m.stream) for m in drain(every_stream)] == every_expected
        assert [(m.type, m.stream) for m in drain(one_stream)] == one_expected
    # Detections and events share the stream's sequence: with one kind only, a gap cannot be told apart
    # from a message of the other kind, so none are counted.
    assert every_stream.gaps == {} and one_stream.gaps == {}


@pytest.fixture
def raw_pub() -> Iterator[tuple[zmq.Socket[bytes], str]]:
    """A bare XPUB socket, to send what the real publisher never would (gaps, garbage)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.XPUB)
    sock.linger = 0
    sock.bind("tcp://127.0.0.1:*")
    try:
        yield sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)
    finally:
        sock.close()


def test_gaps_are_counted_from_sequence_numbers(raw_pub: tuple[zmq.Socket[bytes], str]) -> None:
    raw, endpoint = raw_pub
    with Subscriber(endpoint) as sub:
        for _ in range(2):  # wait until both subscriptions (det. and evt.) have arrived
            assert raw.poll(int(TIMEOUT * 1000)) and raw.recv()
        sequence = [
            ("a", 0),
            ("a", 1),
            ("b", 5),
            ("a", 4),
            ("b", 6),
            ("a", 5),
            ("b", 9),
            ("a", 0),
            ("a", 2),
        ]
        for stream, seq in sequence:
            msg = det(stream, seq, seq=seq) if seq % 2 else evt(stream, seq=seq)
            raw.send_multipart(encode(msg))
        got = [sub.recv(TIMEOUT) for _ in sequence]
        assert [(m.stream, m.seq) for m in got] == sequence
        # a: 1 -> 4 misses 2 and 3; then a restart at 0 (not a gap), 0 -> 2 misses 1.
        # b: starts at 5 (joining late is not a gap); 6 -> 9 misses 7 and 8.
        assert sub.gaps == {"a": 3, "b": 2}


def test_recv_timeout_and_iteration(pub: Publisher) -> None:
    with Subscriber(pub.endpoint) as sub:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            sub.recv(0.2)
        assert 0.15 < time.monotonic() - t0 < 2
        wait_subscribed(pub, 2)
        for i in range(3):
            pub.publish(det("cam1", i))
        frames = []
        for msg in sub:
            frames.append(msg.frame if isinstance(msg, DetectionsMessage) else -1)
            if len(frames) == 3:
                break
        assert frames == [0, 1, 2]


def test_bad_messages_raise_protocol_error_and_are_skipped(raw_pub: tuple[zmq.Socket[bytes], str]) -> None:
    raw, endpoint = raw_pub
    with Subscriber(endpoint, streams=["cam1"]) as sub:
        assert raw.poll(int(TIMEOUT * 1000)) and raw.recv()
        raw.send_multipart([b"det.cam1", b"{garbage"])
        raw.send_multipart([b"det.cam1", b"one", b"too many"])
        raw.send_multipart(encode(det("cam1", 7)))
        with pytest.raises(ProtocolError, match="invalid JSON"):
            sub.recv(TIMEOUT)
        with pytest.raises(ProtocolError, match="3 parts"):
            sub.recv(TIMEOUT)
        msg = sub.recv(TIMEOUT)
        assert isinstance(msg, DetectionsMessage) and msg.frame == 7


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="stream id"):
        Subscriber("tcp://127.0.0.1:1", streams=["cam 1"])
    with pytest.raises(ValueError, match="events, detections or analytics"):
        Subscriber("tcp://127.0.0.1:1", events=False, detections=False)
    with pytest.raises(SubscribeError, match="nonsense://x") as info:
        Subscriber("nonsense://x")
    assert isinstance(info.value, OSError)
    sub = Subscriber("tcp://127.0.0.1:1")
    sub.close()
    sub.close()
    with pytest.raises(SubscribeError, match="closed"):
        sub.recv(0.1)


def test_curve_arguments() -> None:
    server_public, _ = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    with pytest.raises(ValueError, match="not both"):
        Subscriber(
            "tcp://127.0.0.1:1", curve=CurveClient.from_keys(server_public), server_public_key=server_public
        )
    with pytest.raises(ValueError, match="without server_public_key"):
        Subscriber("tcp://127.0.0.1:1", client_secret_key=client_secret)
    with pytest.raises(ValueError, match="40-character Z85"):
        Subscriber("tcp://127.0.0.1:1", server_public_key="short")
    other_public, _ = zmq.curve_keypair()
    with pytest.raises(ValueError, match="does not belong"):
        CurveClient.from_keys(server_public, client_secret, other_public)
    with Subscriber(
        "tcp://127.0.0.1:1", server_public_key=server_public, client_secret_key=client_secret
    ) as sub:
        assert sub.curve == CurveClient(server_public, client_public, client_secret)
        assert sub._sock.getsockopt(zmq.MECHANISM) == zmq.CURVE
        assert sub.handshake_error is None
    throwaway = CurveClient.from_keys(server_public.decode())  # a key pair of its own, for allow_any_client
    assert (
        throwaway.public_key != client_public
        and zmq.curve_public(throwaway.secret_key) == throwaway.public_key
    )
    assert client_secret.decode() not in repr(CurveClient(server_public, client_public, client_secret))


def test_handshake_problems_are_explained() -> None:
    def explain(event: int, value: int = 0, curve: bool = True) -> str:
        return handshake_problem(event, value, curve) or ""

    assert "refused this subscriber's CURVE key" in explain(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
    mismatch = 0x11000002
    assert "requires CURVE" in explain(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, mismatch, curve=False)
    assert "does not use CURVE" in explain(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, mismatch)
    assert "server key" in explain(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32)
    # What a plaintext subscriber of a CURVE publisher usually sees: the server hangs up.
    assert "probably requires CURVE" in explain(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32, curve=False)
    assert handshake_problem(zmq.EVENT_CONNECTED, 0, True) is None
