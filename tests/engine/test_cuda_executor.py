"""On a CUDA GPU: the CUDA executor with the torch device engine, and NMS's first step on the GPU.

- the candidate filter keeps exactly the rows, in exactly the order, that NumPy's ``x[:, 4] > conf`` keeps
  (values at the threshold and NaN included), and an image with more candidates than it has room for comes
  back whole;
- the executor (launcher and waiter threads, CUDA graphs, a batch of n run at the next size up) gives, per
  image, the detections ONNX Runtime's output gives on the CPU.

Skipped without a GPU (run them on the GPU host: docs/gpu.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from streamer.engine.base import EngineOptions
from streamer.postprocess.nms import NmsParams, detect_image
from tests.support.cuda import cuda_torch_or_skip
from tests.support.models import write_oracle_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def torch() -> Any:
    return cuda_torch_or_skip()


def test_candidates_are_the_rows_numpy_keeps_in_row_order(torch: Any) -> None:
    from streamer.engine.candidates import GridCandidates

    rng = np.random.default_rng(0)
    boxes, width, conf = 25200, 85, np.float32(0.25)
    grid = rng.random((3, boxes, width), dtype=np.float32)
    grid[..., 4] = np.where(rng.random((3, boxes)) < 0.02, grid[..., 4], grid[..., 4] * 0.2)  # few pass
    grid[0, 7, 4] = conf  # exactly the threshold: does not pass (strictly greater)
    grid[0, 8, 4] = np.nan  # does not pass either
    grid[2, :3000, 4] = 0.9  # more than the capacity: comes back whole
    device = torch.from_numpy(grid).cuda()
    candidates = GridCandidates(boxes, width, max_batch=4, conf=float(conf), capacity=2048)
    try:
        stream = torch.cuda.Stream()
        candidates.enqueue(device.data_ptr(), 3, stream.cuda_stream)
        stream.synchronize()
        for i in (0, 1):
            expected = grid[i][grid[i][:, 4] > conf]
            got = candidates.rows(i)
            assert candidates.count(i) == len(expected) > 100
            assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))  # bit for bit, in order
        assert candidates.count(2) > 2048
        whole = candidates.rows(2)
        assert np.array_equal(whole.view(np.uint32), grid[2].view(np.uint32))
        params = NmsParams(conf_thres=float(conf))
        for i in range(3):
            assert np.array_equal(detect_image(candidates.rows(i), params), detect_image(grid[i], params))
    finally:
        candidates.close()


def _spots(n: int, h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.full((n, 3, h, w), 16 / 255, np.float32)
    for i in range(n):
        cy, cx = int(rng.integers(8, h - 8)), int(rng.integers(8, w - 8))
        x[i, :, cy - 3 : cy + 3, cx - 3 : cx + 3] = 1.0
    return x


@pytest.mark.parametrize("cuda_graph", [True, False], ids=["graphs", "eager"])
def test_executor_gives_onnxruntimes_detections_at_every_batch_size(
    torch: Any, tmp_path: Path, cuda_graph: bool
) -> None:
    from streamer.engine.cuda_executor import CudaExecutor
    from streamer.engine.torch_device import TorchDeviceEngine

    h, w = 96, 128
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(h, w), box_size=(20, 10))
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    options = EngineOptions(device="cuda", max_batch=4, precision="fp32")
    engine = TorchDeviceEngine(model, options, cuda_graph=cuda_graph, compile="off", sizes=(1, 2))
    assert engine.sizes == (1, 2, 4) and engine.size_for(3) == 4
    executor = CudaExecutor(engine, slots=2, conf=0.25, owns_engine=True)
    params = NmsParams()
    try:
        assert executor.gpu_filter and executor.on_gpu
        expected = {}
        for n in (1, 2, 3, 4, 3, 1):  # sizes 1, 2, 4, 4 (padded), 4, 1; both slots in turn
            slot = executor.free_slot()
            if slot is None:
                _check(executor.done(timeout=30), expected, params)
                slot = executor.free_slot()
            x = _spots(n, h, w, seed=n * 10 + (slot or 0))
            executor.host_input(slot)[:n] = x
            batch = executor.submit(slot, list(range(n)))
            expected[id(batch)] = reference.run(None, {"images": x})[0]
        while executor.inflight:
            _check(executor.done(timeout=30), expected, params)
    finally:
        executor.close()


def _check(done: Any, expected: dict, params: NmsParams) -> None:
    assert done is not None, "no batch finished within 30 s"
    batch, outputs = done
    ref = expected.pop(id(batch))
    for i in range(batch.size):
        got, want = detect_image(outputs.grid_rows(i), params), detect_image(ref[i], params)
        assert got.shape == want.shape == (1, 6)
        np.testing.assert_allclose(got, want, atol=1e-3)
