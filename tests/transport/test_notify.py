"""The internal notification pipe over a real ipc:// ZeroMQ socket in the test's own directory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from streamer.messages import (
    EVENT_EOS,
    EVENT_STARTED,
    FrameReady,
    Notification,
    Shutdown,
    SourceExit,
    StreamEvent,
)
from streamer.transport.notify import NotifyReceiver, NotifySender

TIMEOUT = 5.0  # seconds; every receive is bounded


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)  # the sender lingers 2 s on close; a test must not wait for that


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/notify.sock"


def _every_kind() -> list[Notification]:
    return [
        StreamEvent("cam1", EVENT_STARTED, "h264 64x48", time=1700000000.5,
                    detail={"codec": "h264", "width": 64, "fps": 25.0}),
        FrameReady("cam1", "/dev/shm/run/cam1.1.ring", 2, 1_700_000_000_123_456_789, 41, 1.64,
                   1700000001.25, 64, 48, live=True),
        FrameReady("cam2", "/dev/shm/run/cam2.1.ring", 0, 1, 0, None, 1700000001.5, 1920, 1080),
        StreamEvent("cam1", EVENT_EOS, "end of stream after 42 frames", time=1700000002.0),
        SourceExit("cam1"),
        Shutdown(expect_exits=["cam2"]),
        Shutdown(),
    ]  # fmt: skip


def test_every_notification_type_round_trips_in_order(context: zmq.Context, endpoint: str) -> None:
    receiver = NotifyReceiver(endpoint, context)
    sender = NotifySender(endpoint, context)
    sent = _every_kind()
    try:
        assert all(sender.send(msg) for msg in sent)
        got = [receiver.recv(TIMEOUT) for _ in sent]
    finally:
        sender.close()
        receiver.close()
    assert got == sent
    assert [type(m) for m in got] == [type(m) for m in sent]
    assert got[2].pts is None and got[2].live is False  # type: ignore[union-attr]


def test_a_sender_may_connect_before_the_receiver_binds(context: zmq.Context, endpoint: str) -> None:
    sender = NotifySender(endpoint, context)
    try:
        assert sender.send(SourceExit("early"))
        receiver = NotifyReceiver(endpoint, context)
        try:
            assert receiver.recv(TIMEOUT) == SourceExit("early")
        finally:
            receiver.close()
    finally:
        sender.close()


def test_recv_times_out_with_none(context: zmq.Context, endpoint: str) -> None:
    receiver = NotifyReceiver(endpoint, context)
    try:
        start = time.monotonic()
        assert receiver.recv(0.2) is None
        assert time.monotonic() - start >= 0.15
        assert receiver.recv_nowait() is None
        assert receiver.recv(0) is None
    finally:
        receiver.close()


def test_recv_nowait_returns_a_waiting_message(context: zmq.Context, endpoint: str) -> None:
    receiver = NotifyReceiver(endpoint, context)
    sender = NotifySender(endpoint, context)
    try:
        sender.send(SourceExit("cam1"))
        assert receiver.socket.poll(int(TIMEOUT * 1000)) == zmq.POLLIN  # usable in a zmq.Poller
        assert receiver.recv_nowait() == SourceExit("cam1")
        assert receiver.recv_nowait() is None
    finally:
        sender.close()
        receiver.close()


def test_send_returns_false_when_the_queue_is_full(context: zmq.Context, endpoint: str) -> None:
    sender = NotifySender(endpoint, context, hwm=2)  # nobody binds: messages pile up in the queue
    try:
        start = time.monotonic()
        results = [sender.send(SourceExit(f"s{i}")) for i in range(50)]
        assert time.monotonic() - start < 1.0  # never blocks
        accepted = results.index(False)
        assert 1 <= accepted <= 10
        assert not any(results[accepted:])  # once full, stays full while nobody reads
        # What was accepted is delivered once the reader turns up, and nothing else.
        receiver = NotifyReceiver(endpoint, context)
        try:
            got = [receiver.recv(TIMEOUT) for _ in range(accepted)]
            assert got == [SourceExit(f"s{i}") for i in range(accepted)]
            assert receiver.recv(0.2) is None
        finally:
            receiver.close()
    finally:
        sender.close()
