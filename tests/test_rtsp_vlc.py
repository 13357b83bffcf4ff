"""A camera that refuses RTP over TCP (VLC's RTSP server, started by the test) through the real daemon
with the default config (#12 item 5): before ``transport: auto`` it never connected ("cannot open:
Protocol not supported", retried for ever); now its frames arrive over UDP and the log says why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.daemon import start_daemon
from tests.support.media import bright_spot_frames, write_clip
from tests.support.models import write_oracle_model
from tests.support.vlc import VlcRtspServer, require_vlc

pytestmark = pytest.mark.slow

SIZE = (160, 120)


def test_a_camera_that_refuses_tcp_streams_over_udp_by_default(tmp_path: Path) -> None:
    require_vlc()
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(160, 160))
    spots = [(40.0 + (i % 80), 60.0) for i in range(60 * 25)]  # 60 s: VLC is not asked to loop it here
    clip = write_clip(tmp_path / "cam.ts", bright_spot_frames(SIZE, spots, radius=8), fps=25, gop=25)
    with VlcRtspServer(clip, tmp_path / "vlc.log") as vlc:
        config = (
            f"model:\n  onnx: {model}\nsources:\n  - id: cam\n    url: {vlc.url}\n"
            "publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 0\n"
        )
        daemon = start_daemon(tmp_path, config)
        try:
            daemon.receive_until(lambda ms: len(daemon.detections("cam")) >= 20, timeout=60)
            assert daemon.stop() == 0, daemon.log()
        finally:
            daemon.close()
    log = daemon.log()
    assert "stream cam: transport auto: RTP over udp (the server refuses RTP over TCP" in log
    assert not daemon.events("cam", "reconnecting"), log[-3000:]
    boxes = [m.detections[0].box for m in daemon.detections("cam") if m.detections]
    assert boxes and all(abs((b[1] + b[3]) / 2 - 60.0) <= 2.0 for b in boxes)  # the spot's row, over UDP
