"""The streams' pictures of a running daemon, seen by a real browser (headless Chromium, Debian's package).

Two looping streams of still spots (so that every frame's boxes are known): ``cam`` (640x360, two spots,
a zone and a line) and ``lobby`` (320x240, one spot). Chromium loads the page at ``/`` (it must list both
streams and decode each picture at its source's size) and takes a screenshot of it; the JPEGs of
``/streams/<id>/latest.jpg``, of ``yolostream snapshot`` and of the MJPEG stream ``/live`` decode to the
source's size with a box drawn around each spot, where the oracle put it.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.cli.status import fetch, fetch_bytes
from tests.support.daemon import Daemon, metrics_url, start_daemon
from tests.support.media import moving_spots_clip
from tests.support.models import write_spots_model

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FRAMES = 50
SPOTS = {"cam": ((640, 360), [(160.0, 120.0), (480.0, 240.0)]), "lobby": ((320, 240), [(160.0, 120.0)])}
BOX = {"cam": 96.0, "lobby": 48.0}
"""The oracle's 48 px box (model input) in each stream's source pixels."""


def _wait_running(url: str, daemon: Daemon, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code, body = fetch(f"{url}/readyz")
        if code == 200 and set(json.loads(body)["streams"].values()) == {"running"}:
            return
        assert daemon.proc.poll() is None and time.monotonic() < deadline, daemon.log()[-3000:]
        time.sleep(0.2)


def _decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image


def _check_boxes(image: np.ndarray, stream: str) -> None:
    """A saturated (drawn) box edge on each side of each spot, within a cell of where the oracle puts it;
    the frame itself is grey."""
    (w, h), spots = SPOTS[stream]
    assert image.shape == (h, w, 3)
    sat = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1]
    half, slack = BOX[stream] / 2, BOX[stream] / 12 + 3
    for cx, cy in spots:
        y = slice(int(cy - half / 2), int(cy + half / 2))  # the middle of the vertical edges
        for x in (cx - half, cx + half):
            band = sat[y, int(x - slack) : int(x + slack) + 1]
            assert (band > 120).mean(axis=0).max() > 0.8, (stream, cx, cy, x)
        assert sat[int(cy) - 3 : int(cy) + 3, int(cx) - 3 : int(cx) + 3].max() < 60  # the spot: white
    assert sat[h - 6 : h - 2, 2:6].max() < 60  # a corner of the dark background


def test_a_browser_shows_the_streams_with_their_boxes(tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("needs headless Chromium (Debian package chromium)")
    model = write_spots_model(tmp_path / "spots.onnx")
    for sid, (size, spots) in SPOTS.items():
        moving_spots_clip(
            tmp_path / f"{sid}.mp4", size, [[s] * FRAMES for s in spots], radius=20 if sid == "cam" else 10
        )
    config = (
        f"model:\n  onnx: {model}\n  class_names: [spot]\nengine:\n  max_batch: 2\n"
        "tracking: {enabled: true}\n"
        "sources:\n"
        "  - id: cam\n    url: cam.mp4\n    loop: true\n    realtime: true\n"
        "    zones: [{name: yard, polygon: [[520, 10], [630, 10], [630, 100], [520, 100]]}]\n"
        "    lines: [{name: door, points: [[320, 0], [320, 360]]}]\n"
        "  - id: lobby\n    url: lobby.mp4\n    loop: true\n    realtime: true\n"
        "publish:\n  endpoint: {endpoint}\nlogging:\n  stats_interval_s: 0\n"
        "metrics:\n  listen: 127.0.0.1:0\n"
    )
    daemon = start_daemon(tmp_path, config)
    try:
        url = metrics_url(daemon)
        _wait_running(url, daemon)

        for sid in SPOTS:
            code, data = fetch_bytes(f"{url}/streams/{sid}/latest.jpg", timeout=30)
            assert code == 200, data[:300]
            _check_boxes(_decode(data), sid)
        code, _ = fetch_bytes(f"{url}/streams/nope/latest.jpg")
        assert code == 404

        def snapshot(stream: str, out: Path) -> subprocess.CompletedProcess[str]:
            command = [sys.executable, "-m", "streamer", "snapshot", stream, "-o", str(out), "--url", url]
            return subprocess.run(command, capture_output=True, text=True, timeout=60)

        out = snapshot("cam", tmp_path / "snap.jpg")
        assert out.returncode == 0, out.stderr
        _check_boxes(_decode((tmp_path / "snap.jpg").read_bytes()), "cam")
        out = snapshot("nope", tmp_path / "x.jpg")
        assert out.returncode == 1 and "no picture of stream 'nope' (HTTP 404)" in out.stderr

        # The MJPEG stream: two pictures, each a whole JPEG.
        parts = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("GET", "/streams/lobby/live")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=yolostream-frame"
        for _ in range(2):
            assert response.readline() == b"--yolostream-frame\r\n"
            head = {}
            while (line := response.readline()) != b"\r\n":
                name, value = line.decode().split(":", 1)
                head[name.strip().lower()] = value.strip()
            assert head["content-type"] == "image/jpeg"
            _check_boxes(_decode(response.read(int(head["content-length"]))), "lobby")
            assert response.readline() == b"\r\n"
        conn.close()

        # The browser: the page lists both streams, each picture decoded at its source's size.
        browser = [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000",
        ]  # fmt: skip
        dom = subprocess.run(
            [*browser, "--dump-dom", f"{url}/"], capture_output=True, text=True, timeout=120
        ).stdout  # fmt: skip
        for sid, ((w, h), _) in SPOTS.items():
            card = re.search(rf'<figure class="stream" id="stream-{sid}".*?</figure>', dom, re.S)
            assert card is not None, dom[:3000]
            assert f'<span class="size">{w}x{h}</span>' in card.group(0), card.group(0)
            assert '<span class="state">running</span>' in card.group(0)
        shot = tmp_path / "page.png"
        subprocess.run(
            [*browser, "--window-size=1400,700", f"--screenshot={shot}", f"{url}/"],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        page = cv2.imread(str(shot))
        assert page is not None and page.shape[:2] == (700, 1400)
        # What was drawn, in saturated colours, is on the screen (the page itself has none).
        hsv = cv2.cvtColor(page, cv2.COLOR_BGR2HSV)
        drawn = (hsv[..., 1] > 150) & (hsv[..., 2] > 150)
        assert drawn.sum() > 500, drawn.sum()
    finally:
        daemon.close()
