"""The CUDA frame ring: its messages and layout (everywhere), and two real processes sharing it (GPU host).

GPU part, on the GPU host: ``python -m pytest tests/transport/test_cuda_ring.py`` — a writer process
(spawned, as a source worker is) exports a ring of 2 slots and pushes 6 NV12 frames through it over a
real notification socket; this process maps it once, makes its stream wait on each slot's event, checks
the pixels and the letterbox kernel's output straight from the slot, releases each slot only after its
kernel's event completed, and closes the mapping on the writer's exit.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from streamer.messages import FrameReady, Notification, RingExport, SourceExit
from streamer.transport.cuda_ring import nv12_layout

WIDTH, HEIGHT, FRAMES, SLOTS = 1366, 768, 6, 2


def test_messages_round_trip_and_old_frame_notes_still_decode() -> None:
    encoder, decoder = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder(Notification)
    export = RingExport(
        stream="cam", ring="/dev/shm/x/cam.1.1.cring", device=0, mem_handle=bytes(range(64)),
        event_handles=[bytes([i]) * 64 for i in range(3)], slot_bytes=4096 * 768, pitch=1536,
        width=1366, height=768, pid=42,
    )  # fmt: skip
    note = FrameReady("cam", export.ring, 1, 7, 3, 0.12, 1.0, 1366, 768, True, "nv12", 1, 2)
    assert decoder.decode(encoder.encode(export)) == export
    assert decoder.decode(encoder.encode(note)) == note
    # a FrameReady from before the nv12 fields (array of 10) is an rgb24 frame
    old = msgspec.msgpack.encode(["frame", "cam", "/r", 0, 1, 2, None, 1.0, 32, 24, False])
    decoded = decoder.decode(old)
    assert isinstance(decoded, FrameReady) and (decoded.layout, decoded.colorspace) == ("rgb24", 2)


def test_nv12_slot_layout() -> None:
    assert nv12_layout(1920, 1080) == (2048, 2048 * 1620)  # 1080 + 540 rows, already page-aligned
    pitch, slot = nv12_layout(1366, 767)  # odd height: 384 chroma rows
    assert pitch == 1536 and slot >= pitch * (767 + 384) and slot % 4096 == 0
    assert nv12_layout(101, 51)[0] == 256


def test_ipc_handles_survive_the_trip_as_bytes() -> None:
    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python is not installed")
    from streamer.cuda.runtime import load_cudart
    from streamer.transport.cuda_ring import handle_bytes, handle_from

    cudart = load_cudart()
    data = bytes(range(64))
    handle = handle_from(cudart.cudaIpcMemHandle_t, data)
    assert handle_bytes(handle) == data
    with pytest.raises(ValueError, match="64 bytes"):
        handle_from(cudart.cudaIpcEventHandle_t, b"short")


# -- two processes on the GPU ---------------------------------------------------------------------------


def _cuda_or_skip() -> Any:
    if importlib.util.find_spec("cuda") is None:
        pytest.skip("cuda-python is not installed (pip install 'yolostream[gpu]')")
    from streamer.cuda.runtime import load_cudart

    cudart = load_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count < 1:
        pytest.skip("no CUDA GPU")
    return cudart


def _picture(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame `i`: a Y plane and an interleaved UV plane that differ from frame to frame."""
    rng = np.random.default_rng(i)
    y = rng.integers(16, 236, (HEIGHT, WIDTH), dtype=np.uint8)
    uv = rng.integers(16, 241, ((HEIGHT + 1) // 2, (WIDTH + 1) // 2, 2), dtype=np.uint8)
    return y, uv


def _writer_process(run_dir: str, endpoint: str, result: Any) -> None:
    """The source worker's part: export the ring, copy each frame in on the GPU, announce it."""
    from streamer.cuda.runtime import check, load_cudart
    from streamer.transport.cuda_ring import CudaRingWriter
    from streamer.transport.notify import NotifySender

    cudart = load_cudart()
    sender = NotifySender(endpoint)
    ring = CudaRingWriter(Path(run_dir) / "cam.ring", SLOTS, WIDTH, HEIGHT)
    staging = int(check(cudart.cudaMalloc(WIDTH * HEIGHT * 2), "cudaMalloc"))
    try:
        sender.send(ring.export("cam"))
        for i in range(FRAMES):
            y, uv = _picture(i)
            slot = ring.free_slot()
            deadline = time.monotonic() + 20
            while slot is None and time.monotonic() < deadline:
                time.sleep(0.005)
                slot = ring.free_slot()
            if slot is None:
                raise TimeoutError("the reader never released a slot")
            # the decoder's surface: tightly packed (pitch = width), as PyNvVideoCodec's
            check(cudart.cudaStreamSynchronize(ring.stream), "sync")  # (staging is reused)
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            check(cudart.cudaMemcpy(staging, y.ctypes.data, y.nbytes, kind), "upload")
            check(cudart.cudaMemcpy(staging + y.nbytes, uv.ctypes.data, uv.nbytes, kind), "upload")
            seq = ring.write(slot, staging, staging + y.nbytes, WIDTH)
            sender.send(FrameReady("cam", str(ring.path), slot, seq, i, i / 25, time.time(), WIDTH, HEIGHT,
                                   False, "nv12"))  # fmt: skip
        sender.send(SourceExit("cam"))
        deadline = time.monotonic() + 20
        while ring.busy() and time.monotonic() < deadline:
            time.sleep(0.01)
        result.put(("ok", ring.busy()))
    except BaseException as exc:
        result.put(("error", repr(exc)))
    finally:
        cudart.cudaFree(staging)
        ring.close()
        sender.close()


@pytest.mark.gpu
def test_two_processes_share_frames_through_the_ring(tmp_path: Path) -> None:
    cudart = _cuda_or_skip()
    from streamer.cuda.runtime import check
    from streamer.preprocess.cuda_kernel import LetterboxKernel
    from streamer.preprocess.letterbox import letterbox_geometry
    from streamer.preprocess.nv12 import YuvCoefficients, letterbox_nv12
    from streamer.transport.cuda_ring import CudaRingReader, PendingReleases
    from streamer.transport.notify import NotifyReceiver

    endpoint = f"ipc://{tmp_path}/notify.sock"
    receiver = NotifyReceiver(endpoint)
    spawn = multiprocessing.get_context("spawn")
    result = spawn.Queue()
    child = spawn.Process(target=_writer_process, args=(str(tmp_path), endpoint, result))
    child.start()
    stream = check(cudart.cudaStreamCreate(), "stream")
    kernel = LetterboxKernel(640, 640, swap_rb=False)
    out = int(check(cudart.cudaMalloc(kernel.item_bytes), "cudaMalloc"))
    geometry = letterbox_geometry(WIDTH, HEIGHT, 640, 640)
    coefficients = YuvCoefficients.for_stream()
    readers: dict[str, CudaRingReader] = {}
    pending = PendingReleases(lambda ring, slot, seq: readers[ring].release(slot, seq))
    seen, exited = [], False
    try:
        while not exited and (msg := receiver.recv(30.0)) is not None:
            if isinstance(msg, RingExport):
                assert msg.pid == child.pid and len(msg.event_handles) == SLOTS
                readers[msg.ring] = CudaRingReader(msg)
            elif isinstance(msg, FrameReady):
                reader = readers[msg.ring]
                reader.check(msg.slot, msg.seq)
                reader.wait(msg.slot, stream)  # the GPU waits for the writer's copy, not the CPU
                y_ptr, uv_ptr, pitch = reader.planes(msg.slot)
                kernel.launch(y_ptr, uv_ptr, pitch, geometry, coefficients, out, 0, stream)
                rows = HEIGHT + (HEIGHT + 1) // 2
                host = np.empty((rows, pitch), np.uint8)
                kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
                check(cudart.cudaMemcpyAsync(host.ctypes.data, y_ptr, host.nbytes, kind, stream), "download")
                tensor = np.empty((3, 640, 640), np.float32)
                check(
                    cudart.cudaMemcpyAsync(tensor.ctypes.data, out, tensor.nbytes, kind, stream), "download"
                )
                pending.record(stream, [(msg.ring, msg.slot, msg.seq)])
                check(cudart.cudaStreamSynchronize(stream), "sync")
                assert pending.poll() == 1  # released only now that the kernel has run
                y, uv = _picture(msg.index)
                np.testing.assert_array_equal(host[:HEIGHT, :WIDTH], y)
                np.testing.assert_array_equal(host[HEIGHT:, : uv.shape[1] * 2], uv.reshape(uv.shape[0], -1))
                model, _ = letterbox_nv12(y, uv, WIDTH, HEIGHT, 640, 640, coefficients)
                assert np.array_equal(tensor, model)
                seen.append(msg.index)
            elif isinstance(msg, SourceExit):
                exited = True
                for reader in readers.values():
                    reader.close()  # the writer's exit: no dangling mapping
        status = result.get(timeout=30)
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
        kernel.close()
        pending.close()
        cudart.cudaFree(out)
        cudart.cudaStreamDestroy(stream)
        receiver.close()
    assert status == ("ok", 0), status
    assert seen == list(range(FRAMES)) and child.exitcode == 0
