"""What a SIGHUP changes (`streamer.daemon.reload.plan`): streams added, removed and changed, when the
inference workers restart, and what waits for the next start. The supervisor carrying a plan out is
tested end to end in tests/daemon/test_supervisor.py."""

from __future__ import annotations

from streamer.config import Config, parse_config
from streamer.daemon.reload import plan


def config(sources: str, extra: str = "") -> Config:
    return parse_config(f"model:\n  onnx: m.onnx\nsources:\n{sources}{extra}", "test.yaml", env={})


CAMS = "  - {id: a, url: rtsp://h/a}\n  - {id: b, url: rtsp://h/b}\n  - {id: c, url: rtsp://h/c}\n"


def test_the_same_config_changes_nothing() -> None:
    change = plan(config(CAMS), config(CAMS))
    assert (change.added, change.removed, change.changed) == ([], [], [])
    assert not change.restart_inference and change.deferred == []
    assert change.summary() == "0 added, 0 removed, 0 changed"


def test_streams_added_removed_and_changed_are_told_apart_in_config_order() -> None:
    new = "  - {id: c, url: rtsp://h/c2}\n  - {id: d, url: rtsp://h/d}\n  - {id: a, url: rtsp://h/a}\n"
    change = plan(config(CAMS), config(new))
    assert change.added == ["d"]
    assert change.removed == ["b"]
    assert change.changed == ["c"]
    assert not change.restart_inference  # streams alone never restart inference


def test_a_pipeline_section_restarts_inference_and_metrics_waits_for_the_next_start() -> None:
    change = plan(config(CAMS), config(CAMS, "detection:\n  confidence: 0.5\n"))
    assert change.restart_inference and change.deferred == []
    assert change.summary().endswith("; the inference worker restarts for the new settings")
    change = plan(config(CAMS), config(CAMS, "metrics:\n  listen: 127.0.0.1:9999\n"))
    assert not change.restart_inference
    assert change.deferred == ["a change of the metrics section takes effect at the next start"]


def test_a_stream_moved_to_another_device_is_changed_but_waits_to_move() -> None:
    devices = "engine:\n  devices: [cpu, cpu]\n"
    moved = "  - {id: a, url: rtsp://h/a, device: cpu1}\n  - {id: b, url: rtsp://h/b}\n  - {id: c, url: rtsp://h/c}\n"
    change = plan(config(CAMS, devices), config(moved, devices), forwarder=True)
    assert change.changed == ["a"]
    assert change.deferred == [
        "stream a: a change of its device takes effect at the next start (a running stream is never moved)"
    ]


def test_publish_waits_for_the_next_start_only_behind_a_forwarder() -> None:
    publish = "publish:\n  endpoint: tcp://127.0.0.1:7777\n"
    assert plan(config(CAMS), config(CAMS, publish)).deferred == []
    behind = plan(config(CAMS), config(CAMS, publish), forwarder=True)
    assert behind.restart_inference
    assert behind.deferred == [
        "with engine.devices, a change of the publish section takes effect at the next start"
    ]
