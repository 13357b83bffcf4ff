"""Every frame index is published or dropped with a reason, also across a replaced inference worker.

`StreamBook` with a real ledger (memory-mapped files in a folder): a second book on the same folder is the
worker that replaces a dead one (the first book is simply abandoned, as a SIGKILL leaves it).
"""

from __future__ import annotations

from pathlib import Path

from streamer.messages import FrameReady
from streamer.workers.ledger import Ledger
from streamer.workers.streams import StreamBook


def _note(index: int, after: int, ring_full: int = 0, stream: str = "cam1") -> FrameReady:
    return FrameReady(
        stream, "/ring", 0, index, index, None, 0.0, 8, 8, True, after=after, ring_full=ring_full
    )


def test_source_drops_arrive_with_the_next_frame_as_a_range_with_their_reason(tmp_path: Path) -> None:
    book = StreamBook(Ledger(tmp_path))
    book.add_frame(_note(0, -1), 0.0)
    book.add_frame(_note(4, 0, ring_full=3), 0.0)  # frames 1-3 found every ring slot busy
    stream = book["cam1"]
    event = stream.take_report()
    assert event is not None and event.kind == "dropped"
    assert event.detail == {"first": 1, "last": 3, "dropped": 3, "dropped_total": 3, "ring_full": 3}
    assert stream.take_report() is None  # reported once


def test_a_replacement_worker_reports_what_the_dead_one_lost_and_carries_seq_and_state_on(
    tmp_path: Path,
) -> None:
    first = StreamBook(Ledger(tmp_path))
    for i in range(8):
        first.add_frame(_note(i, i - 1), 0.0)
    first.add_frame(_note(9, 7, ring_full=1), 0.0)  # frame 8 dropped by the source (reported)
    dead = first["cam1"]
    dead.set_state("running", "cpu")
    assert dead.take_report() is not None
    dead.sent(0)  # its started event was message 0
    taken = first.oldest_frames(4)  # frames 0-3 into a batch
    for n, (stream, note, _) in enumerate(taken[:2]):  # 0 and 1 published as messages 1 and 2
        stream.published_frame(note.index, 1 + n)
    # The worker dies: 2 and 3 in flight, 4-7 and 9 queued, 10-14 announced but never read.

    second = StreamBook(Ledger(tmp_path))
    stream = second["cam1"]  # known before any frame comes: its state carries over
    assert (stream.state, stream.decoder, stream.published, stream.dropped) == ("running", "cpu", 2, 1)
    assert stream.record is not None and stream.record.next_seq == 3
    second.add_frame(_note(15, 14), 0.0)
    event = stream.take_report()
    assert event is not None
    assert event.detail == {
        "first": 2, "last": 14, "dropped": 12, "dropped_total": 13, "inference_restart": 12,
    }  # fmt: skip
    assert stream.expected == 16


def test_a_restarted_source_starts_a_new_count(tmp_path: Path) -> None:
    book = StreamBook(Ledger(tmp_path))
    for i in range(5):
        book.add_frame(_note(i, i - 1), 0.0)
    book.add_frame(_note(0, -1), 0.0)  # a new source worker: its file starts again at frame 0
    book.add_frame(_note(1, 0), 0.0)
    assert book["cam1"].take_report() is None
    assert book["cam1"].expected == 2
