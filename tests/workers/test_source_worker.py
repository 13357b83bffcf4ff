"""The source worker's hand-over into its ring: ring generations, blocking for files, dropping for live
streams, and a whole decode loop over a real clip with a reader that releases the slots."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamer.config import SourceConfig
from streamer.messages import EVENT_EOS, EVENT_STARTED, FrameReady, StreamEvent
from streamer.sources.base import DecodedFrame
from streamer.sources.cpu import PyAvSource
from streamer.transport.notify import NotifyReceiver, NotifySender
from streamer.transport.ring import FrameRing
from streamer.workers.common import StopFlag
from streamer.workers.ring_writer import RingWriter, hand_over
from streamer.workers.source import _run
from tests.support.media import decode_frames, write_clip

TIMEOUT = 5.0
SHAPE = (24, 32, 3)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[RingWriter]:
    writer = RingWriter(str(tmp_path), "cam1", slots=2)
    yield writer
    writer.close()


def _frame(index: int, shape: tuple[int, ...] = SHAPE) -> DecodedFrame:
    return DecodedFrame(np.full(shape, index % 256, np.uint8), index, index / 25)


def test_ring_for_makes_a_new_generation_when_a_larger_frame_comes(
    tmp_path: Path, writer: RingWriter
) -> None:
    first = writer.ring_for(1000)
    generation = int(first.path.name.split(".")[2])
    assert first.path == tmp_path / f"cam1.{os.getpid()}.{generation}.ring" and first.path.exists()
    assert (first.slots, first.owner) == (2, True)
    assert writer.ring_for(500) is first  # smaller frames reuse it
    assert writer.ring_for(first.slot_bytes) is first

    second = writer.ring_for(first.slot_bytes + 1)
    assert second is not first and writer.ring is second
    assert (
        second.path.name.startswith(f"cam1.{os.getpid()}.")
        and int(second.path.name.split(".")[2]) > generation
    )
    assert second.slot_bytes >= first.slot_bytes + 1
    with pytest.raises(ValueError, match="closed"):
        first.view(0, (10,))  # the old generation is unmapped...
    assert first.path.exists()  # ...but its file stays for frames already announced

    # The same stream restarted in the same process (a decoder group) never reuses a mapped file.
    again = RingWriter(str(tmp_path), "cam1", slots=2)
    try:
        assert again.ring_for(1000).path not in (first.path, second.path)
    finally:
        again.close()

    writer.close()
    assert writer.ring is None
    writer.close()


def test_a_frame_is_copied_into_a_slot_and_announced(
    writer: RingWriter, pipe: tuple[NotifySender, NotifyReceiver], stop: StopFlag
) -> None:
    sender, receiver = pipe
    frame = DecodedFrame(np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8), 7, 0.28, 123.5)
    assert hand_over("cam1", frame, writer, sender, False, stop) is None
    note = receiver.recv(TIMEOUT)
    assert isinstance(note, FrameReady)
    assert (note.stream, note.index, note.pts, note.capture_time) == ("cam1", 7, 0.28, 123.5)
    assert (note.width, note.height, note.live) == (32, 24, False)
    reader = FrameRing.attach(note.ring)
    try:
        reader.check(note.slot, note.seq)
        np.testing.assert_array_equal(reader.view(note.slot, SHAPE), frame.image)
    finally:
        reader.close()


def test_a_live_stream_drops_the_frame_when_the_ring_is_full(
    writer: RingWriter, pipe: tuple[NotifySender, NotifyReceiver], stop: StopFlag
) -> None:
    sender, receiver = pipe
    assert hand_over("cam1", _frame(0), writer, sender, True, stop) is None
    assert hand_over("cam1", _frame(1), writer, sender, True, stop) is None
    start = time.monotonic()
    assert hand_over("cam1", _frame(2), writer, sender, True, stop) is not None
    assert time.monotonic() - start < 0.5  # no waiting for the inference worker
    notes = [receiver.recv(TIMEOUT) for _ in range(2)]
    assert [n.index for n in notes] == [0, 1]  # type: ignore[union-attr]
    assert all(n.live for n in notes)  # type: ignore[union-attr]
    assert receiver.recv(0.1) is None  # the dropped frame was not announced
    assert writer.ring is not None and writer.ring.busy() == 2


def test_a_file_stream_waits_for_a_free_slot(
    writer: RingWriter, pipe: tuple[NotifySender, NotifyReceiver], stop: StopFlag
) -> None:
    sender, receiver = pipe
    for i in range(2):
        assert hand_over("cam1", _frame(i), writer, sender, False, stop) is None
    first = receiver.recv(TIMEOUT)
    assert isinstance(first, FrameReady)
    reader = FrameRing.attach(first.ring)

    def release_later() -> None:
        time.sleep(0.3)
        reader.release(first.slot, first.seq)

    releaser = threading.Thread(target=release_later)
    releaser.start()
    try:
        start = time.monotonic()
        assert hand_over("cam1", _frame(2), writer, sender, False, stop) is None  # waits for the release
        waited = time.monotonic() - start
    finally:
        releaser.join()
    assert waited >= 0.25
    receiver.recv(TIMEOUT)  # frame 1
    third = receiver.recv(TIMEOUT)
    assert isinstance(third, FrameReady) and third.index == 2
    assert third.slot == first.slot  # the slot the reader gave back
    np.testing.assert_array_equal(reader.view(third.slot, SHAPE), _frame(2).image)
    reader.close()


def test_a_waiting_file_stream_gives_up_when_told_to_stop(
    writer: RingWriter, pipe: tuple[NotifySender, NotifyReceiver], stop: StopFlag
) -> None:
    sender, _ = pipe
    for i in range(2):
        assert hand_over("cam1", _frame(i), writer, sender, False, stop) is None
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    start = time.monotonic()
    try:
        assert hand_over("cam1", _frame(2), writer, sender, False, stop) is not None
    finally:
        timer.cancel()
    assert 0.15 <= time.monotonic() - start < TIMEOUT


def test_a_frame_that_cannot_be_announced_gives_its_slot_back(
    tmp_path: Path, writer: RingWriter, context: zmq.Context, stop: StopFlag
) -> None:
    sender = NotifySender(f"ipc://{tmp_path}/nobody.sock", context, hwm=1)  # nobody reads: fills up
    try:
        results = [hand_over("cam1", _frame(i), writer, sender, True, stop) for i in range(6)]
    finally:
        context.destroy(linger=0)  # closes the sender without its 2 s linger for undeliverable messages
    assert "notify_full" in results
    assert writer.ring is not None
    assert writer.ring.busy() == results.count(None)  # dropped frames hold no slot


def test_a_larger_frame_goes_to_a_new_ring(
    writer: RingWriter, pipe: tuple[NotifySender, NotifyReceiver], stop: StopFlag
) -> None:
    sender, receiver = pipe
    assert hand_over("cam1", _frame(0), writer, sender, False, stop) is None
    assert hand_over("cam1", _frame(1, (48, 64, 3)), writer, sender, False, stop) is None
    small, large = receiver.recv(TIMEOUT), receiver.recv(TIMEOUT)
    assert isinstance(small, FrameReady) and isinstance(large, FrameReady)
    assert small.ring != large.ring
    assert (large.width, large.height) == (64, 48)
    reader = FrameRing.attach(large.ring)
    try:
        np.testing.assert_array_equal(reader.view(large.slot, (48, 64, 3)), _frame(1, (48, 64, 3)).image)
    finally:
        reader.close()


def test_a_whole_file_is_handed_over_in_order_without_loss(
    tmp_path: Path, writer: RingWriter, pipe: tuple[NotifySender, NotifyReceiver], stop: StopFlag
) -> None:
    frames = [np.full((SHAPE), 16 + 20 * i, np.uint8) for i in range(10)]
    clip = write_clip(tmp_path / "clip.mp4", frames)
    cfg = SourceConfig(id="cam1", url=str(clip))
    sender, receiver = pipe
    got: list[tuple[FrameReady, np.ndarray]] = []
    events: list[StreamEvent] = []

    def read() -> None:  # the inference worker's part: copy each frame out, release the slot
        rings: dict[str, FrameRing] = {}
        try:
            while (msg := receiver.recv(TIMEOUT)) is not None:
                if isinstance(msg, StreamEvent):
                    events.append(msg)
                    if msg.kind == EVENT_EOS:
                        break
                    continue
                assert isinstance(msg, FrameReady)
                if msg.ring not in rings:
                    rings[msg.ring] = FrameRing.attach(msg.ring)
                ring = rings[msg.ring]
                ring.check(msg.slot, msg.seq)
                got.append((msg, ring.view(msg.slot, (msg.height, msg.width, 3)).copy()))
                time.sleep(0.01)  # slower than the decoder: the writer must wait, not drop
                ring.release(msg.slot, msg.seq)
        finally:
            stop.set()  # should the reader fail, the writer must not wait for it forever
            for ring in rings.values():
                ring.close()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert _run(cfg, PyAvSource("cam1", str(clip)), sender, writer, stop) == 0
    finally:
        reader.join(TIMEOUT * 2)
    assert [e.kind for e in events] == [EVENT_STARTED, EVENT_EOS]
    assert events[0].detail["codec"] == "h264" and events[1].detail == {"frames": 10}
    assert [note.index for note, _ in got] == list(range(10))
    for (_, pixels), expected in zip(got, decode_frames(clip), strict=True):
        np.testing.assert_array_equal(pixels, expected)
