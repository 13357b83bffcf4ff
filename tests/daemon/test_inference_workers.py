"""The supervisor's inference workers (`streamer.daemon.inference_workers`): their folders, contexts and the
config each runs with; the merged status of several; the load meter
(`streamer.daemon.placement.LoadMeter`)."""

from __future__ import annotations

import multiprocessing as mp
import shutil
from pathlib import Path

import pytest

from streamer.config import parse_config
from streamer.daemon.inference_workers import DevicesError, make_workers, resolve_devices
from streamer.daemon.placement import LoadMeter
from streamer.daemon.processes import policy_of
from streamer.observability.status import RunStatus, StreamStatus, merge_statuses

BASE = "model:\n  onnx: m.onnx\nengine:\n  devices: {}\n  device: {}\nsources:\n  - id: a\n    url: a.mp4\n"
PUBLISH = "publish:\n  endpoint: tcp://127.0.0.1:7000\n"


def _workers(tmp_path: Path, devices: str, device: str = "auto"):  # type: ignore[no-untyped-def]
    cfg = parse_config(BASE.format(devices, device) + PUBLISH)
    workers = make_workers(mp.get_context("spawn"), cfg, tmp_path, None, policy_of(cfg))
    return cfg, workers


def test_two_cpu_workers_get_their_own_folder_socket_epoch_endpoint_and_share_of_threads(
    tmp_path: Path,
) -> None:
    cfg, workers = _workers(tmp_path, "[cpu, cpu]")
    try:
        assert [w.name for w in workers] == ["cpu0", "cpu1"]
        assert [w.run_dir for w in workers] == [tmp_path / "cpu0", tmp_path / "cpu1"]
        assert all(w.run_dir.is_dir() for w in workers)
        assert workers[0].ctx.notify_endpoint == f"ipc://{tmp_path}/cpu0/notify.sock"
        assert workers[0].ctx.inference_epoch is not workers[1].ctx.inference_epoch
        run = workers[1].config(cfg)
        assert (run.engine.device, run.engine.devices) == ("cpu", None)
        assert run.engine.threads == workers[1].threads and (run.engine.threads or 0) >= 1
        assert run.publish.endpoint == f"ipc://{tmp_path}/cpu1/publish.sock" and run.publish.curve is None
        assert cfg.publish.endpoint == "tcp://127.0.0.1:7000"  # (the daemon's own config is untouched)
    finally:
        for w in workers:
            w.close()


def test_one_entry_is_the_single_worker_on_that_device_binding_the_endpoint_itself(tmp_path: Path) -> None:
    cfg, workers = _workers(tmp_path, "[cuda:1]")
    try:
        (w,) = workers
        assert (w.name, w.run_dir, w.ctx.cuda_device) == ("", tmp_path, 1)
        run = w.config(cfg)
        assert run.engine.device == "cuda:1" and run.publish == cfg.publish
        assert w.label == "the inference worker"
    finally:
        w.close()


def test_without_devices_the_worker_runs_the_config_as_it_is_and_nvdec_follows_engine_device(
    tmp_path: Path,
) -> None:
    cfg, workers = _workers(tmp_path, "null", "cuda:2")
    try:
        (w,) = workers
        assert w.config(cfg) is cfg and w.ctx.cuda_device == 2 and w.run_dir == tmp_path
    finally:
        w.close()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has nvidia-smi")
def test_all_on_a_host_without_gpus_is_an_error_naming_the_key() -> None:
    cfg = parse_config(BASE.format("all", "auto"))
    with pytest.raises(DevicesError, match=r"engine\.devices: all, but nvidia-smi lists no GPU"):
        resolve_devices(cfg)


def test_merged_status_adds_the_workers_streams_and_totals_and_keeps_the_oldest_time() -> None:
    one = RunStatus(time=100.0, published=10, batches=3, streams={"a": StreamStatus("running", 10)})
    two = RunStatus(time=99.0, published=5, batches=2, streams={"b": StreamStatus("ended", 5)})
    merged = merge_statuses([one, two])
    assert merged is not None
    assert (merged.time, merged.published, merged.batches, sorted(merged.streams)) == (
        99.0,
        15,
        5,
        ["a", "b"],
    )
    assert merge_statuses([one, None]) is None  # a worker that has written nothing yet: not known
    assert merge_statuses([one]) is one


def test_load_meter_measures_pixels_per_second_over_its_window() -> None:
    meter = LoadMeter(window_s=5.0)
    meter.update(0.0, {"a": (0, 640, 480), "b": (0, 0, 0)})
    meter.update(2.0, {"a": (50, 640, 480)})
    assert meter.rates == {}  # not a whole window yet
    meter.update(5.0, {"a": (125, 640, 480), "b": (100, 0, 0)})
    assert meter.rates == {"a": 640 * 480 * 25.0}  # b's size is not known: not measured
    meter.update(6.0, {"a": (3, 640, 480)})  # counting again (a new worker): a new window
    meter.update(11.0, {"a": (153, 640, 480)})
    assert meter.rates["a"] == 640 * 480 * 30.0
    meter.forget("a")
    assert meter.rates == {}
