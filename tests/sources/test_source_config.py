"""The per-stream settings of live sources: transport, timeouts, reconnect, frozen detection."""

from __future__ import annotations

import pytest

from streamer.config import ReconnectConfig, parse_config
from streamer.errors import ConfigError

HEAD = "model:\n  onnx: m.onnx\nsources:\n"
LIVE_ONLY = "only for live streams (rtsp://, http://, ...): a file is not reconnected"


def _source(text: str):  # type: ignore[no-untyped-def]
    return parse_config(HEAD + text).sources[0]


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(HEAD + text, "cfg.yaml")
    return str(info.value).splitlines()


def test_defaults_suit_cameras() -> None:
    src = _source("  - id: cam\n    url: rtsp://cam.local/stream\n")
    assert src.transport == "auto"  # TCP, and UDP when the server refuses TCP (sources.rtsp)
    assert (src.open_timeout_s, src.read_timeout_s, src.frozen_after_s) == (10, 5, None)
    assert src.reconnect == ReconnectConfig(
        initial_s=1, max_s=30, multiplier=2, jitter=0.2, down_after=5, down_retry_s=60
    )


def test_every_key_can_be_set() -> None:
    src = _source(
        "  - id: cam\n    url: rtsp://cam.local/stream\n    transport: udp\n    open_timeout_s: 3\n"
        "    read_timeout_s: 2.5\n    frozen_after_s: 10\n    reconnect:\n      initial_s: 0.5\n"
        "      max_s: 8\n      multiplier: 1.5\n      jitter: 0\n      down_after: 3\n"
        "      down_retry_s: 20\n"
    )
    assert (src.transport, src.open_timeout_s, src.read_timeout_s, src.frozen_after_s) == ("udp", 3, 2.5, 10)
    assert src.reconnect == ReconnectConfig(
        initial_s=0.5, max_s=8, multiplier=1.5, jitter=0, down_after=3, down_retry_s=20
    )
    # Keys left out of reconnect keep their defaults; an empty reconnect: means all defaults.
    assert (
        _source("  - id: c\n    url: rtsp://h/s\n    reconnect:\n      down_after: 2\n").reconnect.max_s == 30
    )
    assert _source("  - id: c\n    url: rtsp://h/s\n    reconnect:\n").reconnect == ReconnectConfig()


def test_bad_values_are_reported_with_key_and_line() -> None:
    problems = _problems(
        "  - id: cam\n"  # 4
        "    url: rtsp://viewer:hunter2@cam.local/stream\n"  # 5
        "    transport: http\n"  # 6
        "    read_timeout_s: 0\n"  # 7
        "    frozen_after_s: -1\n"  # 8
        "    reconnect:\n"  # 9
        "      jitter: 1.5\n"  # 10
        "      down_after: 0\n"  # 11
        "      multiplier: 0.5\n"  # 12
        "      max_sec: 3\n"  # 13
    )
    assert problems == [
        "cfg.yaml:6: sources[0].transport: must be one of auto, tcp, udp, got 'http'",
        "cfg.yaml:7: sources[0].read_timeout_s: must be > 0, got 0",
        "cfg.yaml:8: sources[0].frozen_after_s: must be > 0, got -1",
        "cfg.yaml:10: sources[0].reconnect.jitter: must be < 1, got 1.5",
        "cfg.yaml:11: sources[0].reconnect.down_after: must be >= 1, got 0",
        "cfg.yaml:12: sources[0].reconnect.multiplier: must be >= 1, got 0.5",
        "cfg.yaml:13: sources[0].reconnect.max_sec: unknown key 'max_sec' (did you mean 'max_s'?)",
    ]


def test_max_below_initial_is_an_error_at_max() -> None:
    assert _problems(
        "  - id: cam\n    url: rtsp://h/s\n    reconnect:\n      initial_s: 5\n      max_s: 2\n"
    ) == ["cfg.yaml:8: sources[0].reconnect.max_s: must be >= initial_s (5), got 2"]


def test_live_only_keys_on_a_file_are_errors() -> None:
    problems = _problems(
        "  - id: clip\n    url: clip.mp4\n    reconnect:\n      initial_s: 2\n    frozen_after_s: 5\n"
        "    transport: udp\n    read_timeout_s: 3\n"
    )
    assert problems == [
        f"cfg.yaml:6: sources[0].reconnect: {LIVE_ONLY}",
        f"cfg.yaml:8: sources[0].frozen_after_s: {LIVE_ONLY}",
        "cfg.yaml:9: sources[0].transport: only for rtsp:// and rtsps:// URLs",
    ]
    assert _problems("  - id: cam\n    url: http://h/s.m3u8\n    transport: tcp\n") == [
        "cfg.yaml:6: sources[0].transport: only for rtsp:// and rtsps:// URLs"
    ]
