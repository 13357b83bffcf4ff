"""Messages to publish and the waits around them, for the tests of the subscriber library
(tests/output/) and of ``yolostream subscribe`` (tests/cli/), against real publishers on loopback."""

from __future__ import annotations

import time

from streamer.messages import EVENT_EOS
from streamer.output.protocol import Detection, DetectionsMessage, EventMessage
from streamer.output.publish import Publisher

TIMEOUT = 30.0  # seconds: a generous cap on every wait (the events come in milliseconds on an idle machine)


def det(stream: str, frame: int, n: int = 1, seq: int = 0) -> DetectionsMessage:
    dets = [Detection(class_id=2, class_name="car", score=0.77, box=(10.4, 20.5, 30.0, 40.49))] * n
    return DetectionsMessage(
        stream=stream, seq=seq, frame=frame, pts=frame * 0.04, capture_ts=time.time(), width=64, height=48,
        detections=dets,
    )  # fmt: skip


def evt(stream: str, kind: str = EVENT_EOS, message: str = "end of file", seq: int = 0) -> EventMessage:
    return EventMessage(stream=stream, seq=seq, event=kind, message=message, ts=time.time())


def wait_subscribed(pub: Publisher, count: int) -> None:
    """Wait until `count` subscriptions are applied (avoids ZeroMQ's "slow joiner" loss)."""
    assert pub.wait_for_subscribers(count, TIMEOUT), f"only {pub.subscribers} subscription(s) arrived"
