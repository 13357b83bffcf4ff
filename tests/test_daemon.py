"""The daemon end to end: real subprocesses, real encoded video, real ZeroMQ, real signals.

The core tests use the oracle model (a box around the brightest spot), written by the project itself, so
they run on a fresh clone; the tinycoco test needs the real YOLOv5s model from ../shared (CI has it).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort
import pytest

from streamer.output.protocol import DetectionsMessage, EventMessage
from streamer.postprocess.nms import NmsParams, box_iou, detect_image, to_source_frame
from streamer.preprocess import letterbox, to_input_tensor
from tests.support.daemon import alive, child_pids, run_dirs, start_daemon
from tests.support.media import bright_spot_clip, corrupt_file, decode_frames, tinycoco_clip
from tests.support.models import write_oracle_model
from tests.support.paths import shared_model, tinycoco_images

pytestmark = pytest.mark.slow


def _spots(w: int, h: int, n: int, seed: int) -> list[tuple[float, float]]:
    """Spot centres kept away from the edges, so the oracle's 40 px box is never clipped."""
    rng = np.random.default_rng(seed)
    return [(float(rng.uniform(0.2, 0.8) * w), float(rng.uniform(0.2, 0.8) * h)) for _ in range(n)]


def _check_stream_order(daemon, stream: str, frames: int) -> list[DetectionsMessage]:  # type: ignore[no-untyped-def]
    """Every frame exactly once and in order; seq consecutive over events and detections; eos last."""
    msgs = [m for m in daemon.messages if m.stream == stream]
    assert [m.seq for m in msgs] == list(range(len(msgs))), "gaps or duplicates in seq"
    assert isinstance(msgs[0], EventMessage) and msgs[0].event == "started"
    assert isinstance(msgs[-1], EventMessage) and msgs[-1].event == "eos"
    dets = [m for m in msgs if isinstance(m, DetectionsMessage)]
    assert [d.frame for d in dets] == list(range(frames))
    return dets


def test_oracle_boxes_land_on_the_spots(tmp_path: Path) -> None:
    """Three streams of different shapes and codecs: each box is centred within 1 px of its spot."""
    model = write_oracle_model(tmp_path / "oracle.onnx")
    clips = {
        "wide": ((1280, 720), "h264", 12),
        "tall": ((720, 1280), "hevc", 10),
        "odd": ((1366, 768), "h264", 8),
    }
    spots = {}
    for sid, ((w, h), codec, n) in clips.items():
        spots[sid] = _spots(w, h, n, seed=len(sid))
        bright_spot_clip(tmp_path / f"{sid}.mp4", (w, h), spots[sid], radius=14, codec=codec)
    sources = "".join(f"  - id: {sid}\n    url: {sid}.mp4\n" for sid in clips)
    daemon = start_daemon(
        tmp_path,
        f"model:\n  onnx: {model}\nengine:\n  max_batch: 4\nsources:\n{sources}"
        "publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 0\n",
    )
    try:
        daemon.until_ended(set(clips))
        assert daemon.wait(30) == 0, daemon.log()  # every stream ended: the daemon exits by itself
    finally:
        daemon.close()
    for sid, ((w, h), _, n) in clips.items():
        dets = _check_stream_order(daemon, sid, n)
        for msg, (x, y) in zip(dets, spots[sid], strict=True):
            assert (msg.width, msg.height) == (w, h)
            assert len(msg.detections) == 1
            det = msg.detections[0]
            assert det.class_name == "person" and det.score == 1.0
            x1, y1, x2, y2 = det.box
            assert abs((x1 + x2) / 2 - x) <= 1.0 and abs((y1 + y2) / 2 - y) <= 1.0, (sid, msg.frame)
    assert not run_dirs(daemon.pid)


def _reference(session: ort.InferenceSession, rgb: np.ndarray, params: NmsParams) -> np.ndarray:
    boxed, geometry = letterbox(rgb, 640, 640)
    out = session.run(None, {"images": to_input_tensor(boxed, swap_rb=False)[None]})[0]
    return to_source_frame(detect_image(out[0], params), geometry)


def _as_array(msg: DetectionsMessage) -> np.ndarray:
    rows = [(*d.box, d.score, d.class_id) for d in msg.detections]
    return np.array(rows, np.float32).reshape(-1, 6)


def _matched(ours: np.ndarray, ref: np.ndarray, iou: float) -> np.ndarray:
    """For each row of `ref`, whether `ours` has a box of the same class with IoU >= `iou`."""
    if len(ref) == 0:
        return np.zeros(0, bool)
    if len(ours) == 0:
        return np.zeros(len(ref), bool)
    same_class = ref[:, 5:6] == ours[None, :, 5]
    return ((box_iou(ref[:, :4], ours[:, :4]) >= iou) & same_class).any(axis=1)


def test_tinycoco_detections_match_onnxruntime(tmp_path: Path) -> None:
    """Real objects, real model: what the daemon publishes is what ONNX Runtime gives on the same frame."""
    model = shared_model("yolov5s-coco.onnx")
    images = tinycoco_images("val2017")[:4]
    clips = {
        "vga": tinycoco_clip(tmp_path / "vga.mp4", images, size=(640, 480), hold=2, codec="h264", crf=0),
        "hd": tinycoco_clip(tmp_path / "hd.mp4", images[::-1], size=(1280, 720), hold=2, codec="hevc", crf=0),
    }
    sources = "".join(f"  - id: {sid}\n    url: {clip.path}\n" for sid, clip in clips.items())
    daemon = start_daemon(
        tmp_path,
        f"model:\n  onnx: {model}\nengine:\n  max_batch: 2\nsources:\n{sources}"
        "publish:\n  endpoint: {endpoint}\n",
    )
    try:
        daemon.until_ended(set(clips), timeout=120)
        assert daemon.wait(30) == 0, daemon.log()
    finally:
        daemon.close()
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    params = NmsParams()
    for sid, clip in clips.items():
        dets = _check_stream_order(daemon, sid, clip.frame_count)
        decoded = decode_frames(clip.path)
        for msg, frame in zip(dets, decoded, strict=True):
            ours, ref = _as_array(msg), _reference(session, frame, params)
            # The same decoded pixels through the same steps: the same detections (to rounding).
            assert len(ours) == len(ref), (sid, msg.frame)
            assert _matched(ours, ref, 0.99).all(), (sid, msg.frame)
            assert np.abs(np.sort(ours[:, 4]) - np.sort(ref[:, 4])).max(initial=0) < 1e-3
        for i, picture in enumerate(clip.pictures):
            # Against the picture before encoding: every confident object is found (IoU >= 0.9).
            ref = _reference(session, picture, params)
            ours = _as_array(dets[i * clip.hold])
            confident = ref[ref[:, 4] >= 0.5]
            assert len(confident) > 0
            assert _matched(ours, confident, 0.9).all(), (sid, i)


def _spot_config(tmp_path: Path, model: Path, streams: dict[str, str]) -> str:
    sources = "".join(
        f"  - id: {sid}\n    url: {url}\n    loop: true\n    realtime: true\n" for sid, url in streams.items()
    )
    return (
        f"model:\n  onnx: {model}\nsources:\n{sources}"
        "publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 1\n"
    )


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx")
    bright_spot_clip(tmp_path / "a.mp4", (640, 480), _spots(640, 480, 25, 1), radius=10)
    daemon = start_daemon(tmp_path, _spot_config(tmp_path, model, {"a": "a.mp4", "b": "a.mp4"}))
    try:
        daemon.receive_until(lambda ms: len([m for m in ms if isinstance(m, DetectionsMessage)]) >= 10)
        workers = child_pids(daemon.pid)
        assert len(workers) >= 3  # inference + two sources (+ multiprocessing's helpers)
        assert run_dirs(daemon.pid)
        started = time.monotonic()
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
        assert time.monotonic() - started < 15
        time.sleep(0.2)
        assert not [pid for pid in workers if alive(pid)], "worker processes left behind"
        assert not run_dirs(daemon.pid), "shared memory left behind"
        assert "yolostream stopped" in daemon.log()
    finally:
        daemon.close()


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_bad_streams_beside_a_good_one(tmp_path: Path) -> None:
    """Missing file, garbage, no video track: each is an error event naming it; the good stream goes on."""
    model = write_oracle_model(tmp_path / "oracle.onnx")
    bright_spot_clip(tmp_path / "good.mp4", (640, 480), _spots(640, 480, 25, 2), radius=10)
    corrupt_file(tmp_path / "garbage.mp4")
    _audio_only(tmp_path / "audio.m4a")
    streams = {"good": "good.mp4", "missing": "nope.mp4", "garbage": "garbage.mp4", "audio": "audio.m4a"}
    daemon = start_daemon(tmp_path, _spot_config(tmp_path, model, streams))
    try:
        daemon.receive_until(lambda ms: {"missing", "garbage", "audio"} <= {
            m.stream for m in ms if isinstance(m, EventMessage) and m.event == "error"})  # fmt: skip
        before = len(daemon.detections("good"))
        daemon.receive_until(lambda ms: len(daemon.detections("good")) >= before + 10)
        assert daemon.proc.poll() is None, "the daemon must keep running"
        assert "nope.mp4" in daemon.events("missing", "error")[0].message
        assert "not a readable video" in daemon.events("garbage", "error")[0].message
        assert "no video track" in daemon.events("audio", "error")[0].message
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    log = daemon.log()
    assert "stream 'missing'" in log and "stream 'garbage'" in log and "stream 'audio'" in log
