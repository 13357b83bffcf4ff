"""The inference loop in-process, with real sockets, a real frame ring and a real (oracle) ONNX model.

Batching: a batch closes when it is full, or when its oldest frame has waited batch_timeout_ms. Live
streams: only the newest waiting frame is inferred. Ordering: a stream's events wait for its frames.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamer.config import parse_config
from streamer.engine import EngineOptions, load_engine
from streamer.engine.executor import CpuExecutor
from streamer.messages import EVENT_EOS, FrameReady, Shutdown, SourceExit, StreamEvent
from streamer.output.client import Subscriber
from streamer.output.protocol import DetectionsMessage, EventMessage
from streamer.output.publish import Publisher
from streamer.transport.notify import NotifyReceiver, NotifySender
from streamer.transport.ring import FrameRing
from streamer.workers.inference import InferenceLoop
from tests.support.media import bright_spot_frames
from tests.support.models import write_oracle_model

W, H = 320, 240


@dataclass
class Rig:
    loop: InferenceLoop
    sender: NotifySender
    ring: FrameRing
    sub: Subscriber
    thread: threading.Thread

    def announce(self, stream: str, index: int, spot: tuple[float, float], live: bool = False) -> None:
        frame = bright_spot_frames((W, H), [spot], radius=6)[0]
        slot = self.ring.free_slot()
        assert slot is not None
        self.ring.view(slot, frame.shape)[...] = frame
        seq = self.ring.commit(slot)
        note = FrameReady(stream, str(self.ring.path), slot, seq, index, index / 25, time.time(), W, H, live)
        assert self.sender.send(note)

    def receive(self, n: int, timeout: float = 10.0) -> list[DetectionsMessage | EventMessage]:
        return [self.sub.recv(timeout=timeout) for _ in range(n)]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(320, 320))
    endpoint = f"ipc://{tmp_path}/pub"
    cfg = parse_config(
        f"model:\n  onnx: {model}\nengine:\n  max_batch: 4\n  batch_timeout_ms: 2000\n"
        f"sources:\n  - id: a\n    url: a.mp4\npublish:\n  endpoint: {endpoint}\n"
        "logging:\n  stats_interval_s: 0\n"
    )
    engine = load_engine("onnxruntime", model, EngineOptions(max_batch=4))
    receiver = NotifyReceiver(f"ipc://{tmp_path}/notify")
    publisher = Publisher(endpoint)
    executor = CpuExecutor(engine, slots=2)
    loop = InferenceLoop(cfg, receiver, publisher, executor)
    sub = Subscriber(endpoint)
    assert publisher.wait_for_subscribers(2, timeout=5)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    sender = NotifySender(f"ipc://{tmp_path}/notify")
    ring = FrameRing.create(tmp_path / "a.ring", 16, W * H * 3)
    yield Rig(loop, sender, ring, sub, thread)
    sender.send(Shutdown())
    thread.join(10)
    assert not thread.is_alive()
    loop.close()
    for closeable in (sender, sub, publisher, receiver, executor, ring):
        closeable.close()


def test_a_full_batch_goes_at_once_and_a_lone_frame_after_the_timeout(rig: Rig) -> None:
    started = time.monotonic()
    for i in range(4):
        rig.announce("a", i, (40.0 + 50 * i, 120.0))
    msgs = rig.receive(4)
    assert time.monotonic() - started < 1.8  # did not wait for the 2 s timeout (generous: CI is small)
    assert rig.loop.batch_sizes == {4: 1}
    assert [m.frame for m in msgs] == [0, 1, 2, 3]  # type: ignore[union-attr]
    for i, msg in enumerate(msgs):
        x1, _, x2, _ = msg.detections[0].box  # type: ignore[union-attr]
        assert abs((x1 + x2) / 2 - (40.0 + 50 * i)) < 1.0

    sent = time.monotonic()
    rig.announce("a", 4, (100.0, 100.0))
    (msg,) = rig.receive(1)
    assert time.monotonic() - sent >= 1.95  # the lone frame waited for the batch timeout
    assert msg.frame == 4  # type: ignore[union-attr]
    assert rig.loop.batch_sizes == {4: 1, 1: 1}
    assert rig.ring.busy() == 0  # every slot was given back


def test_an_event_waits_for_the_frames_before_it(rig: Rig) -> None:
    rig.announce("a", 0, (50.0, 50.0))
    rig.sender.send(StreamEvent("a", EVENT_EOS, "end"))
    first, second = rig.receive(2)
    assert isinstance(first, DetectionsMessage) and isinstance(second, EventMessage)
    assert (first.seq, second.seq) == (0, 1)


def test_only_the_newest_waiting_frame_of_a_live_stream_is_inferred(rig: Rig) -> None:
    for i in range(6):  # arrive together: nothing closes a batch before they are all here
        rig.announce("a", i, (50.0 + 10 * i, 50.0), live=True)
    # The drop report goes out on its own clock (at most one a second), so it may come before or after
    # the detections of the frame that was kept, and a slow machine may split the drops over two reports.
    received: list[DetectionsMessage | EventMessage] = []
    while not any(isinstance(m, DetectionsMessage) for m in received) or _dropped(received) < 5:
        received += rig.receive(1)
    (msg,) = [m for m in received if isinstance(m, DetectionsMessage)]
    assert msg.frame == 5
    assert rig.loop.streams["a"].dropped == 5
    reports = [m.detail for m in received if isinstance(m, EventMessage) and m.event == "dropped"]
    assert (reports[0]["first"], reports[-1]["last"], reports[-1]["dropped_total"]) == (0, 4, 5)
    assert sum(int(r["inference_behind"]) for r in reports) == 5  # within a second or two, by reason
    assert rig.ring.busy() == 0  # the dropped frames' slots were released too
    assert rig.loop.batch_sizes == {1: 1}


def _dropped(messages: list[DetectionsMessage | EventMessage]) -> int:
    return sum(
        int(m.detail["dropped"]) for m in messages if isinstance(m, EventMessage) and m.event == "dropped"
    )


def test_the_rings_of_a_restarted_source_stay_mapped_after_its_predecessor_exited(
    rig: Rig, tmp_path: Path
) -> None:
    # A source worker exits (SourceExit) and a new one — a restarted process, or a stream restarted in a
    # decoder group — announces frames from a new ring. The old worker's exit must not close the new
    # ring each time the stream goes idle (for a CUDA ring that would lose every later frame).
    rig.announce("a", 0, (50.0, 50.0))
    assert rig.sender.send(SourceExit("a"))
    rig.receive(1)
    new = FrameRing.create(tmp_path / "a.new.ring", 4, W * H * 3)
    try:
        rig.ring = new
        rig.announce("a", 1, (60.0, 60.0))
        (msg,) = rig.receive(1)
        assert msg.frame == 1  # type: ignore[union-attr]
        time.sleep(1.5)  # several turns of the loop (it wakes at least every 0.5 s) with the stream idle
        assert str(new.path) in rig.loop.host_frames.rings, "the new worker's ring was closed"
    finally:
        new.close()
