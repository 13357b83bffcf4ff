"""Placement of streams on inference workers (`streamer.daemon.placement`), and the config keys that drive
it."""

from __future__ import annotations

import pytest

from streamer.config import parse_config, worker_names
from streamer.daemon.placement import (
    Placement,
    PlacementError,
    choose,
    stream_loads,
    worker_loads,
)
from streamer.errors import ConfigError

HD30 = 1920 * 1080 * 30.0
VGA30 = 640 * 480 * 30.0


def test_worker_names_count_gpus_by_index_and_cpus_by_position() -> None:
    assert worker_names(["cuda:0", "cuda:1"]) == ["gpu0", "gpu1"]
    assert worker_names(["cpu", "cpu"]) == ["cpu0", "cpu1"]
    assert worker_names(["cuda:3", "cpu", "cuda:1", "cpu"]) == ["gpu3", "cpu0", "gpu1", "cpu1"]


def test_unmeasured_streams_count_as_the_mean_of_the_measured_ones_or_as_one() -> None:
    assert stream_loads(["a", "b"], {}) == {"a": 1.0, "b": 1.0}
    loads = stream_loads(["a", "b", "c"], {"a": HD30, "b": VGA30})
    assert loads == {"a": HD30, "b": VGA30, "c": (HD30 + VGA30) / 2}
    assert worker_loads({"a": 0, "b": 1, "c": 1}, {"a": HD30, "b": VGA30}, 3) == [
        HD30,
        VGA30 + (HD30 + VGA30) / 2,
        0.0,
    ]


def test_choose_takes_the_pinned_worker_else_the_least_loaded_lowest_index_on_ties() -> None:
    assert choose([5.0, 1.0, 1.0], usable=[0, 1, 2]) == 1
    assert choose([5.0, 1.0, 1.0], usable=[0, 1, 2], pinned=0) == 0
    assert choose([5.0, 1.0, 1.0], usable=[0, 2], pinned=1) == 2  # its worker failed: least loaded
    with pytest.raises(PlacementError):
        choose([0.0], usable=[])


def test_streams_are_spread_by_count_until_measured_then_by_pixel_rate() -> None:
    p = Placement(["cpu0", "cpu1"])
    placed = [p.place(sid, {})[0] for sid in ("a", "b", "c", "d")]
    assert placed == [0, 1, 0, 1]
    # Measured: worker 0 carries two 1080p30 streams, worker 1 two VGA ones: the new one goes to 1.
    rates = {"a": HD30, "c": HD30, "b": VGA30, "d": VGA30}
    index, why = p.place("e", rates)
    assert index == 1 and why.startswith("least loaded")
    assert "cpu0 124.4 Mpx/s" in why
    # A stream placed before is never moved by a later placement.
    assert p.place("a", {"a": 1e12})[0] == 0
    assert p.assignment == {"a": 0, "b": 1, "c": 0, "d": 1, "e": 1}


def test_a_pinned_stream_stays_on_its_worker_whatever_the_load() -> None:
    p = Placement(["gpu0", "gpu1"])
    for sid in ("a", "b", "c"):
        assert p.place(sid, {}, pinned="gpu1") == (
            1,
            f"sources[].device (loads: gpu0 0, gpu1 {'abc'.index(sid)})",
        )
    assert p.place("d", {})[0] == 0


def test_evacuate_moves_a_failed_workers_streams_largest_first_onto_the_others() -> None:
    p = Placement(["gpu0", "gpu1", "gpu2"])
    p.assignment = {"big": 0, "small": 0, "x": 1, "y": 2}
    rates = {"big": HD30, "small": VGA30, "x": VGA30, "y": 2 * VGA30}
    moved = p.evacuate(0, rates)
    assert moved == {"big": 1, "small": 2}  # big to the lighter (x: VGA), then small to the lighter one
    assert p.failed == {0} and p.streams_of(0) == []
    assert p.place("new", rates)[0] == 2  # never on the failed worker, pinned or not
    assert p.place("pinned", rates, pinned="gpu0")[1].startswith("its device gpu0 has failed")
    p.evacuate(1, rates)
    with pytest.raises(PlacementError):
        p.evacuate(2, rates)


# --- config ------------------------------------------------------------------------------------------


def _config(devices: str, device: str | None = None) -> str:
    pin = f"    device: {device}\n" if device is not None else ""
    return (
        f"model:\n  onnx: m.onnx\nengine:\n  devices: {devices}\n"
        f"sources:\n  - id: a\n    url: a.mp4\n{pin}  - id: b\n    url: b.mp4\n"
    )


@pytest.mark.parametrize(
    ("devices", "device", "want", "pin"),
    [
        ("[cpu, cpu]", "cpu1", ("cpu", "cpu"), "cpu1"),
        ("[0, 1]", "1", ("cuda:0", "cuda:1"), "gpu1"),
        ("[cuda:2, 0]", "cuda:2", ("cuda:2", "cuda:0"), "gpu2"),
        ("all", "gpu7", "all", "gpu7"),  # (which GPUs exist is checked when the daemon starts)
        ("null", None, None, None),
    ],
)
def test_devices_and_a_streams_device_are_normalised(
    devices: str, device: str | None, want: object, pin: str | None
) -> None:
    cfg = parse_config(_config(devices, device))
    assert cfg.engine.devices == want
    assert cfg.sources[0].device == pin and cfg.sources[1].device is None


@pytest.mark.parametrize(
    ("devices", "device", "line", "message"),
    [
        (
            "[0, 1]",
            "cpu0",
            8,
            "sources[0].device: cpu0: names no worker of engine.devices (workers: gpu0,",
        ),
        ("null", "gpu0", 8, "sources[0].device: gpu0: needs engine.devices"),
        ("[0, 0]", None, 4, "engine.devices: lists a GPU twice"),
        ("[gpu, 1]", None, 4, "engine.devices: each entry must be a GPU index (0, 1, ...), cuda:N or cpu"),
        ("[]", None, 4, "engine.devices: must be a list of GPU indices or cpu entries, or all"),
        ("[cpu]", "fast", 8, "sources[0].device: must name an inference worker"),
    ],
)
def test_bad_devices_are_config_errors_with_key_and_line(
    devices: str, device: str | None, line: int, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_config(devices, device), "d.yaml")
    assert f"d.yaml:{line}: {message}" in str(err.value)
