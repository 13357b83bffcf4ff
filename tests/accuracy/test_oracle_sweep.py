"""The oracle end-to-end sweep: one daemon, ten streams of different sizes and aspect ratios.

Each clip shows a bright disc at a known, fractional position per frame; the oracle model (written by the
tests) puts a box centred on the bright spot of its letterboxed input. Through decode → ring → letterbox →
engine → NMS → mapping to source pixels, every published box must be centred within 1 px of the disc, in
every frame, once and in order: landscape, portrait, square, 4K, and odd sizes (101×51, 1366×768).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamer.output.protocol import DetectionsMessage, EventMessage
from tests.support.daemon import run_dirs, start_daemon
from tests.support.media import bright_spot_clip
from tests.support.models import write_oracle_model

pytestmark = pytest.mark.slow

# id: ((w, h), codec, frames, extra write options)
CLIPS: dict[str, tuple[tuple[int, int], str, int, dict[str, object]]] = {
    "fhd": ((1920, 1080), "h264", 6, {}),
    "hd": ((1280, 720), "hevc", 6, {}),
    "portrait": ((720, 1280), "h264", 6, {}),
    "wxga": ((1366, 768), "h264", 6, {}),
    "vga": ((640, 480), "mpeg4", 8, {}),
    "vga-portrait": ((480, 640), "h264", 8, {}),
    "uhd": ((3840, 2160), "h264", 3, {}),
    "fwvga": ((854, 480), "hevc", 6, {}),
    "tiny-odd": ((101, 51), "mpeg4", 8, {}),
    "odd-444": ((333, 211), "h264", 6, {"pix_fmt": "yuv444p"}),
    "square": ((1000, 1000), "h264", 6, {}),
}


def _spots(w: int, h: int, n: int, seed: int) -> list[tuple[float, float]]:
    """Fractional spot centres away from the edges, so that the oracle's box is never clipped."""
    rng = np.random.default_rng(seed)
    return [(float(rng.uniform(0.25, 0.75) * w), float(rng.uniform(0.25, 0.75) * h)) for _ in range(n)]


def _radius(w: int, h: int) -> float:
    """About 8 px of model input (a 640 letterbox), at least 3 source px."""
    return max(3.0, 8.0 * max(w, h) / 640)


def test_every_box_lands_on_its_spot_at_every_size(tmp_path: Path) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx")
    spots = {}
    for k, (sid, ((w, h), codec, n, options)) in enumerate(CLIPS.items()):
        spots[sid] = _spots(w, h, n, seed=k)
        bright_spot_clip(
            tmp_path / f"{sid}.mp4", (w, h), spots[sid], radius=_radius(w, h), codec=codec, **options
        )
    sources = "".join(f"  - id: {sid}\n    url: {sid}.mp4\n" for sid in CLIPS)
    # The streams share one source process (the geometry is the point here, not isolation): eleven
    # processes starting on a 2-core CI machine took most of this test's minute.
    daemon = start_daemon(
        tmp_path,
        f"model:\n  onnx: {model}\nengine:\n  max_batch: 4\nsources:\n{sources}"
        f"supervisor:\n  cpu_streams_per_process: {len(CLIPS)}\n"
        "publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 0\n",
    )
    try:
        daemon.until_ended(set(CLIPS), timeout=90)
        assert daemon.wait(30) == 0, daemon.log()
    finally:
        daemon.close()
    errors = []
    for sid, ((w, h), _, n, _) in CLIPS.items():
        msgs = [m for m in daemon.messages if m.stream == sid]
        assert [m.seq for m in msgs] == list(range(len(msgs))), f"{sid}: gaps or duplicates in seq"
        assert isinstance(msgs[-1], EventMessage) and msgs[-1].event == "eos", sid
        dets = [m for m in msgs if isinstance(m, DetectionsMessage)]
        assert [d.frame for d in dets] == list(range(n)), f"{sid}: every frame once, in order"
        for msg, (x, y) in zip(dets, spots[sid], strict=True):
            assert (msg.width, msg.height) == (w, h)
            assert len(msg.detections) == 1, (sid, msg.frame)
            x1, y1, x2, y2 = msg.detections[0].box
            dx, dy = (x1 + x2) / 2 - x, (y1 + y2) / 2 - y
            if max(abs(dx), abs(dy)) > 1.0:
                errors.append(f"{sid} {w}x{h} frame {msg.frame}: centre off by ({dx:+.2f}, {dy:+.2f}) px")
    assert not errors, "\n".join(errors)
    assert not run_dirs(daemon.pid)
