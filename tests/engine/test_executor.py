"""The in-flight executor on the real ONNX Runtime engine and the oracle model: order, buffer ownership,
slot accounting, the wake pipe, and failures."""

from __future__ import annotations

import select
from collections.abc import Iterator

import numpy as np
import pytest

from streamer.engine import Engine, EngineOptions, load_engine
from streamer.engine.executor import Batch, CpuExecutor, Outputs
from streamer.errors import EngineError
from tests.support.models import write_oracle_model

IN_H, IN_W = 64, 96
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    model = write_oracle_model(tmp_path_factory.mktemp("models") / "oracle.onnx", input_size=(IN_H, IN_W))
    engine = load_engine("onnxruntime", model, EngineOptions(device="cpu", max_batch=3, threads=1))
    yield engine
    engine.close()


@pytest.fixture
def executor(engine: Engine) -> Iterator[CpuExecutor]:
    executor = CpuExecutor(engine, slots=2)
    yield executor
    executor.close()


def _fill(buffer: np.ndarray, spots: list[tuple[int, int]]) -> list[tuple[float, float]]:
    """Write one image per spot into `buffer` (a 3×3 white square at x, y); return the expected centres."""
    buffer[...] = 0.0
    for i, (x, y) in enumerate(spots):
        buffer[i, :, y : y + 3, x : x + 3] = 1.0
    return [(x + 1.5, y + 1.5) for x, y in spots]


def _centres(outputs: Outputs) -> list[tuple[float, float]]:
    return [(float(row[0]), float(row[1])) for row in outputs.tensors["output"][:, 0]]


def _collect(executor: CpuExecutor) -> tuple[Batch, Outputs]:
    done = executor.done(timeout=TIMEOUT)
    assert done is not None, f"no batch finished within {TIMEOUT} s"
    return done


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_buffers_match_the_engine(executor: CpuExecutor, engine: Engine) -> None:
    assert len(executor.buffers) == 2
    assert all(b.shape == (3, 3, IN_H, IN_W) and b.dtype == np.float32 for b in executor.buffers)
    assert executor.buffers[0] is not executor.buffers[1]
    assert executor.free_slot() == 0 and executor.inflight == 0
    assert executor.done() is None  # nothing in flight


def test_batches_complete_in_order_with_the_outputs_of_their_own_buffer(executor: CpuExecutor) -> None:
    batches = [
        [(5, 5), (80, 50), (40, 20)],
        [(70, 10)],
        [(10, 55), (50, 30)],
        [(88, 60), (1, 1), (33, 44)],
    ]
    results: list[tuple[Batch, Outputs]] = []
    submitted = []
    for spots in batches:
        slot = executor.free_slot()
        if slot is None:  # both slots in flight: collect the oldest first
            results.append(_collect(executor))
            slot = executor.free_slot()
        assert slot is not None
        expected = _fill(executor.buffers[slot], spots)
        submitted.append((slot, expected))
        executor.submit(slot, [f"frame{i}" for i in range(len(spots))])
    while executor.inflight:
        results.append(_collect(executor))

    assert [slot for slot, _ in submitted] == [0, 1, 0, 1]
    assert len(results) == len(batches)
    for (batch, outputs), (slot, expected), spots in zip(results, submitted, batches, strict=True):
        assert batch.slot == slot
        assert batch.size == len(spots) and list(batch.items) == [f"frame{i}" for i in range(len(spots))]
        assert outputs.tensors["output"].shape == (len(spots), 1, 85)
        assert outputs.grid_rows(0) is outputs.tensors["output"][0] or np.shares_memory(
            outputs.grid_rows(0), outputs.tensors["output"]
        )
        np.testing.assert_allclose(_centres(outputs), expected, atol=1e-3)
        assert batch.finished >= batch.submitted > 0


def test_free_slot_is_none_while_every_slot_is_in_flight(executor: CpuExecutor) -> None:
    _fill(executor.buffers[0], [(10, 10)])
    executor.submit(0, ["a"])
    _fill(executor.buffers[1], [(20, 20)])
    executor.submit(1, ["b"])
    assert executor.free_slot() is None
    assert executor.inflight == 2
    with pytest.raises(RuntimeError, match="not the free slot"):
        executor.submit(0, ["c"])
    first = executor.done(timeout=TIMEOUT)
    assert first is not None and first[0].items == ["a"]
    assert executor.free_slot() == 0
    with pytest.raises(RuntimeError, match="not the free slot"):
        executor.submit(1, ["d"])  # still in flight
    second = executor.done(timeout=TIMEOUT)
    assert second is not None and second[0].items == ["b"]
    assert executor.inflight == 0


def test_the_wake_fd_becomes_readable_when_a_batch_finishes(executor: CpuExecutor) -> None:
    assert not _readable(executor.wake_fd, 0.0)
    _fill(executor.buffers[0], [(30, 30)])
    executor.submit(0, ["a"])
    assert _readable(executor.wake_fd, TIMEOUT)
    executor.clear_wake()
    assert not _readable(executor.wake_fd, 0.0)
    done = executor.done(timeout=0.0)  # readable means finished: no waiting needed
    assert done is not None
    np.testing.assert_allclose(_centres(done[1]), [(31.5, 31.5)], atol=1e-3)
    assert not _readable(executor.wake_fd, 0.05)


def test_done_with_a_zero_timeout_does_not_wait(executor: CpuExecutor) -> None:
    _fill(executor.buffers[0], [(30, 30)])
    executor.submit(0, ["a"])
    # Either still running (None) or finished: never blocks. Then it does finish.
    first = executor.done(timeout=0.0)
    result = first if first is not None else executor.done(timeout=TIMEOUT)
    assert result is not None and result[0].items == ["a"]


def test_an_engine_failure_is_raised_from_done_and_frees_the_slot(executor: CpuExecutor) -> None:
    good = executor.buffers[0]
    executor.buffers[0] = np.zeros((3, 3, IN_H + 1, IN_W), np.float32)  # not what the model takes
    executor.submit(0, ["bad"])
    _fill(executor.buffers[1], [(7, 9)])
    executor.submit(1, ["good"])
    assert _readable(executor.wake_fd, TIMEOUT)
    with pytest.raises(EngineError, match="inference failed"):
        executor.done(timeout=TIMEOUT)
    assert executor.free_slot() == 0
    assert executor.inflight == 1
    # The batch behind the failed one is unaffected, and the slot can be used again.
    done = executor.done(timeout=TIMEOUT)
    assert done is not None and done[0].items == ["good"]
    np.testing.assert_allclose(_centres(done[1]), [(8.5, 10.5)], atol=1e-3)
    executor.buffers[0] = good
    _fill(good, [(60, 40)])
    executor.submit(0, ["again"])
    done = executor.done(timeout=TIMEOUT)
    assert done is not None
    np.testing.assert_allclose(_centres(done[1]), [(61.5, 41.5)], atol=1e-3)


def test_an_executor_needs_a_slot(engine: Engine) -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        CpuExecutor(engine, slots=0)
