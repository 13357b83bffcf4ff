"""The shared-memory frame ring: a real second process reads what the first wrote; slot bookkeeping and
the sequence guard that keeps a recycled slot from being mistaken for the announced frame."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from streamer.transport.ring import FrameRing, StaleSlotError

SHAPE = (48, 64, 3)


def _frame(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _write(ring: FrameRing, image: np.ndarray) -> tuple[int, int]:
    slot = ring.free_slot()
    assert slot is not None
    ring.view(slot, image.shape)[...] = image
    return slot, ring.commit(slot)


def _read_in_child(
    path: str, slot: int, seq: int, shape: tuple[int, ...], out: multiprocessing.Queue
) -> None:
    """Runs in a spawned process: attach as the reader, copy the slot out under the guard, release it."""
    ring = FrameRing.attach(path)
    try:
        ring.check(slot, seq)
        view = ring.view(slot, shape)
        pixels = view.copy()
        del view
        ring.check(slot, seq)
        ring.release(slot, seq)
        out.put((ring.slots, ring.slot_bytes, ring.owner, pixels))
    finally:
        ring.close()


@pytest.fixture
def ring(tmp_path: Path):
    ring = FrameRing.create(tmp_path / "cam.1.ring", slots=3, slot_bytes=int(np.prod(SHAPE)))
    yield ring
    ring.close()
    ring.unlink()


def test_another_process_reads_exactly_the_pixels_written(ring: FrameRing) -> None:
    image = _frame(1)
    _write(ring, _frame(0))  # slot 0 holds something else: the reader must pick the right slot
    slot, seq = _write(ring, image)
    assert (slot, ring.busy()) == (1, 2)

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(str(ring.path), slot, seq, SHAPE, out))
    child.start()
    try:
        slots, slot_bytes, owner, pixels = out.get(timeout=30)
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0
    assert (slots, slot_bytes, owner) == (3, ring.slot_bytes, False)
    np.testing.assert_array_equal(pixels, image)
    # The child's release is visible to the writer through the shared header.
    assert ring.busy() == 1
    assert ring.free_slot() == 2


def test_the_file_is_in_the_directory_given_and_unlink_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "run" / "cam.1.ring"
    path.parent.mkdir()
    ring = FrameRing.create(path, slots=2, slot_bytes=100)
    assert list(path.parent.iterdir()) == [path]
    assert ring.slot_bytes == 128  # rounded up to a cache line
    assert path.stat().st_size >= 2 * 128
    ring.close()
    ring.unlink()
    assert not path.exists()
    ring.unlink()  # already gone: no error
    with pytest.raises(FileNotFoundError):
        FrameRing.attach(path)


def test_slots_are_handed_out_round_robin_and_freed_by_release(ring: FrameRing) -> None:
    reader = FrameRing.attach(ring.path)
    try:
        written = [_write(ring, _frame(i)) for i in range(3)]
        assert [slot for slot, _ in written] == [0, 1, 2]
        assert [seq for _, seq in written] == sorted({seq for _, seq in written})  # increasing, distinct
        assert ring.busy() == 3
        assert ring.free_slot() is None  # full

        reader.release(1, written[1][1])
        assert ring.busy() == 2
        assert ring.free_slot() == 1
        slot, _ = _write(ring, _frame(3))
        assert slot == 1

        reader.release(2, written[2][1])
        reader.release(0, written[0][1])
        assert ring.free_slot() == 2  # the cursor moves on past the slot last handed out
        assert ring.free_slot() == 0
    finally:
        reader.close()


def test_a_stale_release_does_not_free_a_slot(ring: FrameRing) -> None:
    slot, seq = _write(ring, _frame(0))
    ring.release(slot, seq + 1)  # not the frame the slot holds
    assert ring.busy() == 1
    ring.release(slot, seq)
    assert ring.busy() == 0


def test_check_raises_once_the_writer_recycled_the_slot(ring: FrameRing) -> None:
    reader = FrameRing.attach(ring.path)
    try:
        first = [_write(ring, _frame(i)) for i in range(3)]
        slot, seq = first[0]
        reader.check(slot, seq)  # still there
        reader.release(slot, seq)
        again, new_seq = _write(ring, _frame(9))
        assert again == slot and new_seq != seq
        with pytest.raises(StaleSlotError, match=f"slot {slot} of cam.1.ring"):
            reader.check(slot, seq)
        reader.check(slot, new_seq)
    finally:
        reader.close()


def test_a_restarted_writer_does_not_reuse_the_sequence_numbers_of_its_predecessor(tmp_path: Path) -> None:
    path = tmp_path / "cam.1.ring"
    first = FrameRing.create(path, slots=2, slot_bytes=int(np.prod(SHAPE)))
    reader = FrameRing.attach(path)
    try:
        slot, seq = _write(first, _frame(0))
        first.close()  # the writer dies; its announcement of (slot, seq) is still on its way
        second = FrameRing.create(path, slots=2, slot_bytes=int(np.prod(SHAPE)))  # same path, new writer
        try:
            new_slot, new_seq = _write(second, _frame(1))
            assert new_slot == slot
            assert new_seq != seq
            with pytest.raises(StaleSlotError):
                reader.check(slot, seq)
            reader.release(slot, seq)  # a late release of the old frame must not free the new one
            assert second.busy() == 1
        finally:
            second.close()
    finally:
        reader.close()


def test_abandon_frees_a_committed_slot(ring: FrameRing) -> None:
    slots = [_write(ring, _frame(i))[0] for i in range(3)]
    assert ring.free_slot() is None
    ring.abandon(slots[1])
    assert ring.busy() == 2
    assert ring.free_slot() == slots[1]


def test_a_frame_larger_than_the_slot_is_refused(ring: FrameRing) -> None:
    ring.view(0, SHAPE)  # exactly the slot's size fits
    with pytest.raises(ValueError, match="does not fit"):
        ring.view(0, (49, 64, 3))
    with pytest.raises(ValueError, match="does not fit"):
        ring.view(0, SHAPE, np.float32)


def test_views_of_different_slots_do_not_overlap(ring: FrameRing) -> None:
    for slot in range(3):
        ring.view(slot, SHAPE)[...] = slot + 1
    for slot in range(3):
        assert np.all(ring.view(slot, SHAPE) == slot + 1)


def test_attach_refuses_a_file_that_is_not_a_ring(tmp_path: Path) -> None:
    path = tmp_path / "not.ring"
    path.write_bytes(b"\0" * 8192)
    with pytest.raises(ValueError, match="not a frame ring"):
        FrameRing.attach(path)


def test_create_refuses_an_empty_ring(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        FrameRing.create(tmp_path / "a.ring", slots=0, slot_bytes=10)
    with pytest.raises(ValueError):
        FrameRing.create(tmp_path / "b.ring", slots=2, slot_bytes=0)


def test_close_is_idempotent_and_a_closed_ring_gives_no_views(tmp_path: Path) -> None:
    with FrameRing.create(tmp_path / "cam.1.ring", slots=2, slot_bytes=64) as ring:
        ring.view(0, (64,))[...] = 7
    with pytest.raises(ValueError, match="closed"):
        ring.view(0, (64,))
    ring.close()  # again: no error
    reader = FrameRing.attach(tmp_path / "cam.1.ring")
    assert np.all(reader.view(0, (64,)) == 7)  # closing the writer's map left the file intact
    reader.close()
    reader.close()
