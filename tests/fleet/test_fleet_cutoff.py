"""A fleet daemon cut off from NATS stops its cameras before their leases could expire (and be taken
elsewhere), and runs them again once NATS is back (real nats-server, oracle model, looping file cameras);
its /metrics count the renewals, the cameras stopped and the durable sink's queue through it all."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamer.output.client import ReceiveTimeout
from streamer.output.protocol import DetectionsMessage
from tests.support.daemon import Samples, metrics_url, scrape, start_daemon, value
from tests.support.media import bright_spot_clip
from tests.support.models import write_oracle_model
from tests.support.nats import NatsCluster

pytestmark = pytest.mark.slow

LEASE_S = 3.0


def _drain(daemon) -> None:  # type: ignore[no-untyped-def]
    """Receive whatever the subscriber has queued (until 1 s of silence)."""
    while True:
        try:
            daemon.messages.append(daemon.sub.recv(timeout=1.0))
        except ReceiveTimeout:
            return


def _metrics_until(url: str, what: str, check, timeout: float = 60.0) -> Samples:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check(samples := scrape(url)[1]):
        assert time.monotonic() < deadline, f"gave up waiting for {what}: {sorted(samples.items())}"
        time.sleep(0.3)
    return samples


def _fleet(samples: Samples) -> dict[str, float]:
    """The fleet and durable-sink metrics of a scrape, by short name."""
    names = {
        "leases": ("yolostream_fleet_leases", {}),
        "renewed": ("yolostream_fleet_lease_renewals_total", {"result": "ok"}),
        "renewals_failed": ("yolostream_fleet_lease_renewals_total", {"result": "failed"}),
        "stopped_no_renewal": ("yolostream_fleet_cameras_stopped_total", {"reason": "no_renewal"}),
        "stopped_lease_lost": ("yolostream_fleet_cameras_stopped_total", {"reason": "lease_lost"}),
        "published": ("yolostream_durable_published_total", {}),
        "acked": ("yolostream_durable_acked_total", {}),
        "resent": ("yolostream_durable_resent_total", {}),
        "dropped": ("yolostream_durable_dropped_total", {}),
        "queued": ("yolostream_durable_queue_depth", {}),
    }
    return {short: value(samples, name, **labels) for short, (name, labels) in names.items()}


def test_a_daemon_cut_off_from_nats_stops_its_cameras_within_lease_s_and_resumes(
    tmp_path: Path, nats_server: NatsCluster
) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(128, 160))
    bright_spot_clip(
        tmp_path / "clip.mp4", (160, 128), [(40.0 + 4 * i, 60.0) for i in range(20)], radius=8, fps=10
    )
    (tmp_path / "cameras.yaml").write_text(
        "".join(
            ["sources:\n"]
            + [f"  - id: c{i}\n    url: clip.mp4\n    loop: true\n    realtime: true\n" for i in range(2)]
        )
    )
    url = nats_server.urls[0]
    fleet = f"fleet:\n  nats: [{url}]\n  name: cut\n  daemon: d\n  lease_s: {LEASE_S}\n  replicas: 1\n"
    (tmp_path / "fleet.yaml").write_text(f"model:\n  onnx: {model}\n{fleet}")
    put = subprocess.run(
        [sys.executable, "-m", "streamer", "fleet", "put", str(tmp_path / "cameras.yaml"), "--config",
         str(tmp_path / "fleet.yaml")], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert put.returncode == 0, put.stderr
    config = (
        f"model:\n  onnx: {model}\npublish:\n  endpoint: {{endpoint}}\nmetrics:\n  listen: 127.0.0.1:0\n"
        f"supervisor:\n  cpu_streams_per_process: 2\n{fleet}"
    )
    daemon = start_daemon(tmp_path, config)
    try:

        def both_running(ms: list) -> bool:  # type: ignore[type-arg]
            return {m.stream for m in ms[-20:] if isinstance(m, DetectionsMessage)} == {"c0", "c1"}

        daemon.receive_until(both_running, timeout=90)
        url = metrics_url(daemon)
        before = _fleet(
            _metrics_until(url, "renewals and acknowledged messages", lambda s: _fleet(s)["renewed"] >= 2
                           and _fleet(s)["acked"] > 0)
        )  # fmt: skip
        assert before["leases"] == 2 and before["renewals_failed"] == 0, before
        assert before["stopped_no_renewal"] == before["stopped_lease_lost"] == 0, before
        assert before["published"] >= before["acked"] > 0 and before["dropped"] == 0, before
        nats_server.kill(0)
        cut_at = time.time()
        # Nothing more after the cameras stop: the last detection comes within lease_s of the cut.
        daemon.messages.clear()
        time.sleep(LEASE_S + 3)
        _drain(daemon)
        late = [m for m in daemon.messages if isinstance(m, DetectionsMessage)]
        assert late, "no detections at all after the cut: the test saw nothing"
        last = max((m.publish_ts for m in late), default=cut_at)
        print(f"cut off: last detection {last - cut_at:.1f} s after NATS went away (lease_s {LEASE_S})")
        assert last - cut_at <= LEASE_S, daemon.log()[-3000:]
        assert "stopping it before its lease can expire" in daemon.log()
        cut = _fleet(scrape(url)[1])
        print("metrics while cut off:", cut)
        assert cut["leases"] == 0 and cut["stopped_no_renewal"] == 2 and cut["renewals_failed"] >= 1, cut
        assert cut["queued"] > 0 and cut["published"] > cut["acked"], cut  # (queued for NATS meanwhile)

        _drain(daemon)
        daemon.messages.clear()
        nats_server.restart(0)
        back_at = time.time()

        def both_back(ms: list) -> bool:  # type: ignore[type-arg]
            return {m.stream for m in ms if isinstance(m, DetectionsMessage) and m.publish_ts > back_at} == {
                "c0",
                "c1",
            }

        daemon.receive_until(both_back, timeout=90)
        print(f"NATS back: both cameras running again after {time.time() - back_at:.1f} s")
        # (a renewal comes a tick after the claim: wait for it, do not race it)
        back = _fleet(
            _metrics_until(url, "the durable queue stored and the new leases renewed",
                           lambda s: _fleet(s)["queued"] == 0 and _fleet(s)["leases"] == 2
                           and _fleet(s)["renewed"] > cut["renewed"])
        )  # fmt: skip
        print("metrics after NATS came back:", back)
        assert back["renewed"] > cut["renewed"] and back["stopped_lease_lost"] == 0, back
        assert back["resent"] > 0 and back["dropped"] == 0, back
        assert daemon.stop() == 0, daemon.log()[-3000:]
    finally:
        daemon.close()
