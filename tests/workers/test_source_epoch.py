"""A source takes back the ring slots that a replaced (crashed) inference worker held."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamer.sources.base import DecodedFrame
from streamer.transport.notify import NotifyReceiver, NotifySender
from streamer.transport.ring import FrameRing, StaleSlotError
from streamer.workers.common import StopFlag, WorkerContext
from streamer.workers.ring_writer import RingWriter, hand_over

SHAPE = (24, 32, 3)


@pytest.fixture
def epoch() -> object:
    return multiprocessing.get_context("spawn").Value("i", 3)


@pytest.fixture
def sender(tmp_path: Path) -> Iterator[NotifySender]:
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/notify.sock"
    receiver = NotifyReceiver(endpoint, ctx)
    sender = NotifySender(endpoint, ctx)
    yield sender
    sender.close()
    receiver.close()
    ctx.destroy(linger=0)


def _frame(i: int) -> DecodedFrame:
    return DecodedFrame(np.full(SHAPE, i, np.uint8), i, i / 25)


def test_slots_held_by_the_old_reader_are_taken_back_when_the_epoch_moves(tmp_path: Path, epoch) -> None:  # type: ignore[no-untyped-def]
    writer = RingWriter(str(tmp_path), "cam1", slots=3, epoch=epoch)
    try:
        ring = writer.ring_for(int(np.prod(SHAPE)))
        seqs = [(slot, ring.commit(slot)) for slot in (ring.free_slot(), ring.free_slot())]  # type: ignore[arg-type]
        assert ring.busy() == 2
        assert writer.reclaim_if_reader_replaced() == 0  # same epoch: the reader is alive
        epoch.value += 1  # the supervisor replaced the inference worker
        assert writer.reclaim_if_reader_replaced() == 2
        assert ring.busy() == 0 and writer.reclaim_if_reader_replaced() == 0
        reader = FrameRing.attach(ring.path)
        try:
            for slot, seq in seqs:  # an old announcement reaching the new reader is recognised as stale
                with pytest.raises(StaleSlotError):
                    reader.check(slot, seq)
            assert sorted(ring.free_slot() for _ in range(3)) == [0, 1, 2]  # type: ignore[type-var]
        finally:
            reader.close()
    finally:
        writer.close()


def test_without_an_epoch_nothing_is_reclaimed(tmp_path: Path) -> None:
    writer = RingWriter(str(tmp_path), "cam1", slots=2)
    try:
        ring = writer.ring_for(64)
        ring.commit(ring.free_slot())  # type: ignore[arg-type]
        assert writer.reclaim_if_reader_replaced() == 0 and ring.busy() == 1
    finally:
        writer.close()


def test_a_file_stream_blocked_on_a_dead_reader_goes_on_once_it_is_replaced(
    tmp_path: Path,
    epoch,
    sender: NotifySender,  # type: ignore[no-untyped-def]
) -> None:
    stop = StopFlag(WorkerContext(str(tmp_path), "", None, "INFO", threading.Event(), os.getppid()))
    writer = RingWriter(str(tmp_path), "cam1", slots=2, epoch=epoch)
    try:
        assert hand_over("cam1", _frame(0), writer, sender, False, stop) is None
        assert hand_over("cam1", _frame(1), writer, sender, False, stop) is None  # never released
        result: list[str | None] = []
        blocked = threading.Thread(
            target=lambda: result.append(hand_over("cam1", _frame(2), writer, sender, False, stop))
        )
        blocked.start()
        time.sleep(0.3)
        assert blocked.is_alive() and not result  # a file waits for a free slot...
        epoch.value += 1  # ...until the reader that held them is replaced
        blocked.join(2)
        assert result == [None]
    finally:
        stop.set()
        writer.close()
