"""The TensorRT plan cache on the CPU: the key, file names, stale and corrupt plans rebuilt, atomic writes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest

import streamer.engine.plan_cache as plan_cache
from streamer.engine.plan_cache import CACHE_FORMAT, PlanCache, PlanKey, atomic_write, file_sha256

KEY = PlanKey(
    onnx_sha256="a" * 64,
    tensorrt_version="10.13.0.35",
    gpu_name="NVIDIA H100 80GB HBM3",
    compute_capability="9.0",
    precision="fp16",
    calibration_sha256=None,
    min_batch=1,
    opt_batch=8,
    max_batch=8,
    input_height=640,
    input_width=640,
    workspace_bytes=4 << 30,
)
PLAN = b"serialized engine \x00\x01\x02" * 1000


class Builds:
    """A build function that counts its calls and returns a distinct plan each time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return PLAN + str(self.calls).encode()


@pytest.fixture
def cache(tmp_path: Path) -> PlanCache:
    return PlanCache(tmp_path)


# ------------------------------------------------------------------------------------------------- key

CHANGES = {
    "onnx_sha256": "b" * 64,
    "tensorrt_version": "10.13.1.1",
    "gpu_name": "NVIDIA H200",
    "compute_capability": "8.9",
    "precision": "fp32",
    "min_batch": 2,
    "opt_batch": 4,
    "max_batch": 16,
    "input_height": 384,
    "input_width": 672,
    "workspace_bytes": None,
    "cache_format": CACHE_FORMAT + 1,
}


def test_every_field_is_in_the_key() -> None:
    fields = {f.name for f in dataclasses.fields(PlanKey)}
    assert fields == set(CHANGES) | {"calibration_sha256"}


@pytest.mark.parametrize(("field", "value"), CHANGES.items())
def test_key_changes_with_each_field(field: str, value: object) -> None:
    other = dataclasses.replace(KEY, **{field: value})
    assert other.digest != KEY.digest
    assert PlanCache(Path("/c")).plan_path("m", other) != PlanCache(Path("/c")).plan_path("m", KEY)


def test_key_changes_with_int8_calibration_data() -> None:
    a = dataclasses.replace(KEY, precision="int8", calibration_sha256="1" * 64)
    b = dataclasses.replace(KEY, precision="int8", calibration_sha256="2" * 64)
    assert len({a.digest, b.digest, KEY.digest}) == 3


def test_key_is_stable() -> None:
    assert PlanKey(**KEY.fields()).digest == KEY.digest
    assert len(KEY.digest) == 64 and int(KEY.digest, 16) >= 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"precision": "bf16"}, "precision must be one of fp32, fp16, int8"),
        ({"precision": "int8"}, "calibration_sha256 is required for int8"),
        ({"calibration_sha256": "1" * 64}, "only for int8"),
        ({"min_batch": 4, "opt_batch": 2}, "min_batch <= opt_batch"),
        ({"max_batch": 4}, "opt_batch <= max_batch"),
        ({"input_width": 0}, "input size must be positive"),
        ({"workspace_bytes": 0}, "workspace_bytes must be positive"),
    ],
)
def test_key_rejects_nonsense(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(KEY, **changes)


# ------------------------------------------------------------------------------------------ the files


def test_plan_path_under_cache_dir_engines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YOLOSTREAM_CACHE", str(tmp_path / "c"))
    path = PlanCache().plan_path("yolov7-coco", KEY)
    assert path == tmp_path / "c" / "engines" / f"yolov7-coco-{KEY.digest[:16]}.plan"
    assert PlanCache().plan_path("../we ird/..", KEY).name == f"we_ird-{KEY.digest[:16]}.plan"


def test_store_then_load(cache: PlanCache) -> None:
    path = cache.store("yolov7", KEY, PLAN)
    assert path.read_bytes() == PLAN
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["fields"]["gpu_name"] == "NVIDIA H100 80GB HBM3"  # readable key fields
    assert meta["key"] == KEY.digest
    assert meta["plan_bytes"] == len(PLAN)
    assert cache.load("yolov7", KEY) == PLAN
    assert sorted(p.name for p in cache.dir.iterdir()) == sorted([path.name, path.with_suffix(".json").name])


def test_get_or_build_builds_once(cache: PlanCache) -> None:
    build = Builds()
    plan, path, built = cache.get_or_build("m", KEY, build)
    assert (build.calls, built, path.read_bytes()) == (1, True, plan)
    again, path2, built2 = cache.get_or_build("m", KEY, build)
    assert (build.calls, built2, again, path2) == (1, False, plan, path)


def test_a_changed_key_never_loads_the_old_plan(cache: PlanCache) -> None:
    build = Builds()
    cache.get_or_build("m", KEY, build)
    for field, value in CHANGES.items():
        _, _, built = cache.get_or_build("m", dataclasses.replace(KEY, **{field: value}), build)
        assert built, field
    assert build.calls == 1 + len(CHANGES)


def test_stale_sidecar_is_rebuilt(cache: PlanCache, caplog: pytest.LogCaptureFixture) -> None:
    """A plan under the right name whose sidecar records other fields (e.g. written for another
    TensorRT version by a cache format that collided) is rebuilt, never loaded."""
    path = cache.store("m", KEY, PLAN)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["fields"]["tensorrt_version"] = "8.6.1"
    sidecar.write_text(json.dumps(meta))
    build = Builds()
    with caplog.at_level(logging.INFO, logger="streamer.engine.plan_cache"):
        plan, _, built = cache.get_or_build("m", KEY, build)
    assert built and plan == PLAN + b"1"
    assert "stale (tensorrt_version: '8.6.1' -> '10.13.0.35')" in caplog.text
    assert cache.load("m", KEY) == plan  # the rebuilt plan replaced it, with a matching sidecar


def test_sidecar_with_another_key_digest_is_rebuilt(cache: PlanCache) -> None:
    path = cache.store("m", KEY, PLAN)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["key"] = "0" * 64
    sidecar.write_text(json.dumps(meta))
    assert cache.load("m", KEY) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "append", "empty"])
def test_corrupt_or_truncated_plan_is_rebuilt_with_a_warning(
    cache: PlanCache, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = cache.store("m", KEY, PLAN)
    data = bytearray(PLAN)
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[100] ^= 0xFF
    elif damage == "append":
        data += b"x"
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="streamer.engine.plan_cache"):
        plan, _, built = cache.get_or_build("m", KEY, Builds())
    assert built
    assert "corrupt or truncated" in caplog.text
    assert cache.load("m", KEY) == plan


@pytest.mark.parametrize("sidecar", [None, "{not json", "[1, 2]"])
def test_missing_or_unreadable_sidecar_is_rebuilt(
    cache: PlanCache, caplog: pytest.LogCaptureFixture, sidecar
) -> None:
    path = cache.store("m", KEY, PLAN)
    if sidecar is None:
        path.with_suffix(".json").unlink()
    else:
        path.with_suffix(".json").write_text(sidecar)
    with caplog.at_level(logging.WARNING, logger="streamer.engine.plan_cache"):
        assert cache.load("m", KEY) is None
    assert "unreadable sidecar" in caplog.text


def test_discard(cache: PlanCache) -> None:
    path = cache.store("m", KEY, PLAN)
    cache.discard("m", KEY)
    assert not path.exists() and not path.with_suffix(".json").exists()
    cache.discard("m", KEY)  # nothing left: no error
    assert cache.load("m", KEY) is None


def test_empty_plan_is_refused(cache: PlanCache) -> None:
    with pytest.raises(ValueError, match="empty plan"):
        cache.store("m", KEY, b"")


# -------------------------------------------------------------------------------------- atomic writes


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.plan"
    atomic_write(target, b"old")
    atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert _leftovers(target.parent) == []


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.plan"
    atomic_write(target, b"old")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(plan_cache.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []

    fresh = tmp_path / "never.plan"
    with pytest.raises(OSError):
        atomic_write(fresh, b"data")
    assert not fresh.exists()
    assert _leftovers(tmp_path) == []


def test_interrupted_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyboardInterrupt (or any BaseException) between write and rename cleans up too."""
    target = tmp_path / "f.plan"

    def interrupted(src: str, dst: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(plan_cache.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"data")
    assert list(tmp_path.iterdir()) == []


def test_crash_between_plan_and_sidecar_never_loads_a_mismatched_pair(
    cache: PlanCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.store("m", KEY, PLAN)
    real = plan_cache.atomic_write

    def fail_on_sidecar(path: Path, data: bytes) -> None:
        if path.suffix == ".json":
            raise OSError(5, "I/O error")
        real(path, data)

    monkeypatch.setattr(plan_cache, "atomic_write", fail_on_sidecar)
    with pytest.raises(OSError):
        cache.store("m", KEY, PLAN + b"newer")
    monkeypatch.setattr(plan_cache, "atomic_write", real)
    # New plan, old sidecar: the recorded hash does not match, so it is rebuilt rather than loaded.
    assert cache.load("m", KEY) is None
    assert _leftovers(cache.dir) == []


def test_file_sha256(tmp_path: Path) -> None:
    import hashlib

    f = tmp_path / "model.onnx"
    data = os.urandom(3 << 20)
    f.write_bytes(data)
    assert file_sha256(f, chunk=1000) == hashlib.sha256(data).hexdigest()
