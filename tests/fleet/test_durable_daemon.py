"""A daemon in fleet mode publishes every det/evt message of its camera to JetStream too, the same payloads
as on ZeroMQ, and `yolostream subscribe --nats --since all` reads them back (oracle model, a file camera)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from streamer.fleet.names import stream_name
from streamer.output.protocol import DetectionsMessage, decode
from tests.fleet.conftest import read_stream
from tests.support.daemon import start_daemon
from tests.support.media import bright_spot_clip
from tests.support.models import write_oracle_model
from tests.support.nats import NatsCluster

pytestmark = pytest.mark.slow

FRAMES = 20


def test_every_message_of_a_camera_is_in_the_durable_stream_once(
    tmp_path: Path, nats_server: NatsCluster
) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx")
    spots = [(100.0 + 10 * i, 120.0 + 5 * i) for i in range(FRAMES)]
    bright_spot_clip(tmp_path / "cam.mp4", (320, 240), spots, radius=10)
    config = (
        f"model:\n  onnx: {model}\nsources:\n  - id: cam\n    url: cam.mp4\n"
        "publish:\n  endpoint: {endpoint}\n"
        f"fleet:\n  nats: [{nats_server.urls[0]}]\n  name: e2e\n  daemon: d1\n  replicas: 1\n"
    )
    daemon = start_daemon(tmp_path, config)
    try:
        daemon.until_ended({"cam"})
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.close()
    log = daemon.log()
    assert f"durable detections: {len(daemon.messages)} stored in JetStream, 0 dropped" in log, log[-3000:]

    stored = read_stream(nats_server.urls, stream_name("e2e"))
    ids = Counter(headers["Nats-Msg-Id"] for _, headers, _ in stored)
    assert len(ids) == len(stored) == len(daemon.messages) and max(ids.values()) == 1
    durable = [decode(subject.split(".", 2)[2].encode(), payload) for subject, _, payload in stored]
    assert [(m.stream, m.seq, type(m).__name__) for m in durable] == [
        (m.stream, m.seq, type(m).__name__) for m in daemon.messages
    ]
    dets = [m for m in durable if isinstance(m, DetectionsMessage)]
    assert [d.frame for d in dets] == list(range(FRAMES))
    assert dets == daemon.detections("cam")  # the very same payloads (boxes, timestamps)

    out = subprocess.run(
        [sys.executable, "-m", "streamer", "subscribe", "--nats", nats_server.urls[0], "--fleet", "e2e",
         "--since", "all", "--json", "--count", str(len(stored)), "--timeout", "30"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(m["stream"], m["seq"]) for m in lines] == [(m.stream, m.seq) for m in durable]
