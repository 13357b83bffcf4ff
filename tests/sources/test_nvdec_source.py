"""NVDEC on the GPU host: the source's frames against PyAV's, and the daemon with NVDEC and a CPU fallback.

    python -m pytest tests/sources/test_nvdec_source.py        (docs/gpu.md: the full command line)

Skips without NVDEC (no NVIDIA driver, PyNvVideoCodec or cuda-python). The daemon test also needs the
torch engine on CUDA (torch, onnx2torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamer.output.protocol import DetectionsMessage, EventMessage
from streamer.sources.nvdec import NvdecSource, nvdec_usable
from tests.support.daemon import start_daemon
from tests.support.media import bright_spot_clip, decode_timestamps, write_clip
from tests.support.models import write_oracle_model
from tests.support.nv12clips import content_frames, decode_nv12

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cudart() -> Any:
    if (why := nvdec_usable()) is not None:
        pytest.skip(f"no NVDEC: {why}")
    from streamer.cuda.runtime import load_cudart

    cudart = load_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        pytest.skip("no CUDA GPU")
    return cudart


def _download(cudart: Any, frame: Any) -> tuple[np.ndarray, np.ndarray]:
    from streamer.cuda.runtime import check

    check(cudart.cudaStreamSynchronize(frame.stream), "sync")
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    w2 = (frame.width + 1) // 2 * 2
    y = np.empty((frame.height, w2), np.uint8)
    uv = np.empty(((frame.height + 1) // 2, w2), np.uint8)
    for out, ptr in ((y, frame.y_ptr), (uv, frame.uv_ptr)):
        check(cudart.cudaMemcpy2D(out.ctypes.data, w2, ptr, frame.pitch, w2, out.shape[0], kind), "copy")
    return y[:, : frame.width], uv.reshape(uv.shape[0], -1, 2)


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_frames_are_pyavs_bit_for_bit_with_the_same_pts(cudart: Any, tmp_path: Path, codec: str) -> None:
    frames, _ = content_frames((1366, 768), count=3)
    clip = write_clip(tmp_path / f"{codec}.mp4", [f for f in frames for _ in range(4)], codec=codec)
    expected = decode_nv12(clip)
    source = NvdecSource("cam", str(clip))
    try:
        info = source.open()
        assert (info.decoder, info.width, info.height) == ("nvdec", 1366, 768)
        got = []
        for frame in source.frames():
            y, uv = _download(cudart, frame)
            got.append((frame.index, frame.pts, y.copy(), uv.copy()))
    finally:
        source.close()
    assert [g[0] for g in got] == list(range(len(expected))) == list(range(12))
    assert [g[1] for g in got] == pytest.approx([float(t) for t in decode_timestamps(clip)])
    for (_, _, y, uv), want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(y, want.y)
        np.testing.assert_array_equal(uv, want.uv)


def test_daemon_runs_nvdec_beside_a_cpu_fallback_stream(cudart: Any, tmp_path: Path) -> None:
    """An MPEG-4 Part 2 stream falls back to the CPU decoder while an H.264 stream stays on NVDEC; the
    oracle's boxes land on the spots in both (the NVDEC frames through the CUDA ring and kernel)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    model = write_oracle_model(tmp_path / "oracle.onnx")
    rng = np.random.default_rng(3)
    spots = {
        "gpu": [(float(rng.uniform(300, 1000)), float(rng.uniform(200, 500))) for _ in range(12)],
        "old": [(float(rng.uniform(150, 500)), float(rng.uniform(100, 380))) for _ in range(8)],
    }
    bright_spot_clip(tmp_path / "gpu.mp4", (1280, 720), spots["gpu"], radius=14, codec="h264")
    bright_spot_clip(tmp_path / "old.mp4", (640, 480), spots["old"], radius=14, codec="mpeg4")
    daemon = start_daemon(
        tmp_path,
        f"model:\n  onnx: {model}\nengine:\n  backend: torch\n  device: cuda\n  max_batch: 4\n"
        "sources:\n  - id: gpu\n    url: gpu.mp4\n    decoder: nvdec\n  - id: old\n    url: old.mp4\n"
        "publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 0\n",
    )
    try:
        daemon.until_ended({"gpu", "old"}, timeout=180)
        assert daemon.wait(60) == 0, daemon.log()
    finally:
        daemon.close()
    events = {
        sid: [m for m in daemon.messages if m.stream == sid and isinstance(m, EventMessage)] for sid in spots
    }
    assert [e.event for e in events["old"]][:2] == ["fallback", "started"], daemon.log()
    assert events["old"][1].detail["decoder"] == "cpu"
    assert events["gpu"][0].event == "started" and events["gpu"][0].detail["decoder"] == "nvdec"
    assert "fallback" not in [e.event for e in events["gpu"]]
    for sid, points in spots.items():
        dets = [m for m in daemon.messages if m.stream == sid and isinstance(m, DetectionsMessage)]
        assert [d.frame for d in dets] == list(range(len(points)))
        for msg, (x, y) in zip(dets, points, strict=True):
            (det,) = msg.detections
            x1, y1, x2, y2 = det.box
            assert abs((x1 + x2) / 2 - x) <= 1.0 and abs((y1 + y2) / 2 - y) <= 1.0, (sid, msg.frame)
