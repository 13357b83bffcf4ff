"""The TensorRT backend.

TensorRT cannot be installed on any machine the project has (its builder is not on the package index
these hosts reach; TensorRT-RTX refuses the H100/H200), so what runs here is:

- mypy over `streamer/engine/tensorrt.py` and `tensorrt_build.py` against ``tensorrt-stubs`` (a call
  that does not exist in the TensorRT 10 Python API fails), with a canary proving the stubs are really
  used;
- the backend loader's error when TensorRT is absent (or only its type stubs are installed).

The tests that build and run an engine skip unless TensorRT and a CUDA GPU are present; they have never
run on the project's machines.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from streamer.engine import EngineOptions, load_engine
from streamer.errors import EngineError
from tests.engine import trt_typecheck
from tests.support.models import write_oracle_model

NO_TENSORRT = (
    "TensorRT cannot be installed on the project's machines (the builder is not on the package index they "
    "reach; TensorRT-RTX refuses compute capability 9.0): see ../shared/device/README.md"
)


def _tensorrt_installed() -> bool:
    """True only for a real TensorRT: tensorrt-stubs alone makes `tensorrt` an importable, empty namespace."""
    spec = importlib.util.find_spec("tensorrt")
    if spec is None:
        return False
    trt = importlib.import_module("tensorrt")
    return hasattr(trt, "Builder")


# --------------------------------------------------------------------------------- runs everywhere


def test_tensorrt_backend_passes_mypy_against_the_stubs(tmp_path: Path) -> None:
    version = trt_typecheck.stubs_version()
    if version is None:
        pytest.skip(
            "tensorrt-stubs is not installed (.ci/run installs it: pip install --no-deps tensorrt-stubs)"
        )
    target, canary = trt_typecheck.check(tmp_path)
    assert target.returncode == 0, f"mypy against tensorrt-stubs {version}:\n{target.stdout}{target.stderr}"
    # The canary calls a method TensorRT does not have: it must fail, or the stubs are not in use.
    assert canary.returncode == 1, canary.stdout + canary.stderr
    assert '"Builder" has no attribute "build_cuda_engine_that_does_not_exist"' in canary.stdout


def test_without_tensorrt_the_backend_is_a_clear_engine_error(tmp_path: Path) -> None:
    if _tensorrt_installed():
        pytest.skip("TensorRT is installed here")
    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(64, 64))
    with pytest.raises(EngineError, match=r"engine backend 'tensorrt' needs a package that is not installed"):
        load_engine("tensorrt", model, EngineOptions(device="cuda"))


# -------------------------------------------------------------------- needs TensorRT and a CUDA GPU


@pytest.fixture(scope="module")
def trt_gpu() -> None:
    trt = pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    if not hasattr(trt, "Builder"):
        pytest.skip(f"{NO_TENSORRT} (only tensorrt-stubs is installed: an empty `tensorrt` namespace)")
    pytest.importorskip("cuda", reason="cuda-python is not installed")
    from streamer.cuda.runtime import load_cudart

    cudart = load_cudart()
    count = cudart.cudaGetDeviceCount()
    if count[0] != cudart.cudaError_t.cudaSuccess or count[1] < 1:
        pytest.skip("no CUDA GPU")


@pytest.mark.gpu
def test_build_caches_the_plan_and_reads_the_layout(trt_gpu: None, tmp_path: Path) -> None:
    from streamer.engine.device import OutputLayout, TensorSpec
    from streamer.engine.tensorrt import TensorRTEngine
    from streamer.engine.tensorrt_build import TensorRTBuildOptions, build_plan

    model = write_oracle_model(tmp_path / "oracle.onnx", input_size=(64, 96), num_classes=3)
    options = EngineOptions(device="cuda", max_batch=2)
    build = TensorRTBuildOptions(cache_root=tmp_path / "cache", workspace_bytes=256 << 20)
    plan = build_plan(model, options, build)
    assert plan.parent == tmp_path / "cache" / "engines" and plan.with_suffix(".json").is_file()
    mtime = plan.stat().st_mtime_ns

    engine = TensorRTEngine(model, options, build)
    try:
        assert plan.stat().st_mtime_ns == mtime  # loaded from the cache, not rebuilt
        assert engine.layout is OutputLayout.GRID
        assert engine.input == TensorSpec("images", "float32", (-1, 3, 64, 96))
        assert engine.outputs == (TensorSpec("output", "float32", (-1, 1, 8)),)
        assert (engine.spec.max_batch, engine.spec.num_classes) == (2, 3)
        contexts = [engine.new_context(), engine.new_context()]
        assert contexts[0] is not contexts[1]
    finally:
        engine.close()
