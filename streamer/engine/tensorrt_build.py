"""TensorRT plans: builds a serialized engine from the ONNX file and keeps it in the plan cache.

The build side of the TensorRT backend: `TensorRTBuildOptions`, `build_plan` (``yolostream build``) and
`load_or_build`, with what the run side shares (`read_model`, `use_gpu`, `TensorRTLogger`);
`streamer.engine.tensorrt` runs the plan. Written against the TensorRT 10 Python API and type-checked
with mypy against ``tensorrt-stubs`` (`tests/engine/trt_typecheck.py`). TensorRT cannot be installed on
any machine the project has, so **none of this module has ever been executed**; see docs/tensorrt.md.

How a model becomes an engine (`build_plan`, and `TensorRTEngine` on a cache miss):

1. the ONNX graph is read once (`model_info.inspect_model`, as for every backend): its image input and
   output layout (``--grid``, EfficientNMS_TRT or ONNX NonMaxSuppression) are known before TensorRT is
   touched, and a graph yolostream cannot post-process fails here;
2. the plan cache key (`plan_cache.PlanKey`) is made from the ONNX bytes, TensorRT version, GPU name and
   compute capability, precision (+ INT8 calibration cache), batch profile, input size and workspace;
3. on a miss: TensorRT's plugins are registered (EfficientNMS_TRT lives there), the ONNX is parsed
   (every parser error listed), FP16/INT8 flags, the workspace limit and one optimisation profile for
   batch 1..max_batch (H×W fixed) are set, INT8 calibrates on a folder of images (entropy calibrator 2,
   letterboxed exactly as at run time) with a calibration cache file, and the serialized plan is built
   with a progress line per phase and stored atomically.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, cast

import cv2
import numpy as np
import tensorrt as trt

from streamer.cuda.runtime import check, load_cudart
from streamer.engine.base import EngineOptions
from streamer.engine.model_info import ModelInfo, inspect_model
from streamer.engine.plan_cache import PRECISIONS, PlanCache, PlanKey, atomic_write, file_sha256
from streamer.errors import EngineError, ModelError
from streamer.paths import cache_dir
from streamer.preprocess import letterbox, to_input_tensor

if TYPE_CHECKING:
    from typing_extensions import Buffer


if not hasattr(trt, "Builder"):
    # `pip install tensorrt-stubs` alone leaves a code-less `tensorrt` namespace package behind.
    raise ImportError(
        "TensorRT is not installed (the `tensorrt` package found has no code: type stubs only?)"
    )

__all__ = [
    "PlanModel",
    "TensorRTBuildOptions",
    "TensorRTLogger",
    "build_plan",
    "device_index",
    "load_or_build",
    "read_model",
    "use_gpu",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_SEVERITY = {
    trt.ILogger.Severity.INTERNAL_ERROR: logging.CRITICAL,
    trt.ILogger.Severity.ERROR: logging.ERROR,
    trt.ILogger.Severity.WARNING: logging.WARNING,
    trt.ILogger.Severity.INFO: logging.DEBUG,  # TensorRT's INFO is a chatty build log
    trt.ILogger.Severity.VERBOSE: logging.DEBUG - 5,
}


@dataclass(frozen=True)
class TensorRTBuildOptions:
    """How to build the engine, beyond `EngineOptions` (precision, max_batch, input size, device)."""

    workspace_bytes: int | None = None
    """Builder workspace memory-pool limit; None leaves TensorRT's default (the GPU's memory)."""
    opt_batch: int | None = None
    """The batch the profile is tuned for; None: max_batch."""
    calibration_images: Path | None = None
    """INT8: a folder of representative images (letterboxed as at run time)."""
    calibration_cache: Path | None = None
    """INT8: the calibration cache file, read if it exists, written after calibrating. None: one under
    ``cache_dir()/calibration`` named for the model, input size and ONNX hash."""
    calibration_batch: int = 8
    calibration_max_images: int = 512
    swap_rb: bool = True
    """INT8 calibration images are read as BGR; True converts them to RGB (``model.channel_order: rgb``)."""
    cache_root: Path | None = None
    """Root of the plan cache (plans go in ``<root>/engines``); None: `streamer.paths.cache_dir`."""


# ------------------------------------------------------------------------------------------------- CUDA


def device_index(device: str) -> int:
    if device in ("auto", "cuda"):
        return 0
    if device.startswith("cuda:"):
        return int(device.split(":", 1)[1])
    raise EngineError(f"the TensorRT backend runs on a CUDA GPU; engine.device is {device!r}")


def use_gpu(index: int) -> tuple[str, str]:
    """(name, ``"major.minor"`` compute capability) of CUDA device `index`, made current."""
    cudart = load_cudart()
    check(cudart.cudaSetDevice(index), f"cudaSetDevice({index})")
    prop = check(cudart.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    raw = prop.name
    name = raw.split(b"\0", 1)[0].decode() if isinstance(raw, bytes) else str(raw)
    return name, f"{prop.major}.{prop.minor}"


# ------------------------------------------------------------------------------- TensorRT callbacks
# TensorRT calls these from C++ through `noexcept` functions: an exception escaping one would abort the
# process, so each catches everything and reports it instead.


class TensorRTLogger(trt.ILogger):
    """Forwards TensorRT's messages to Python logging (INFO and VERBOSE at DEBUG levels)."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)

    def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
        with contextlib.suppress(Exception):  # see the note above the class
            level = _SEVERITY.get(severity, logging.INFO)
            if log.isEnabledFor(level):
                log.log(level, "TensorRT: %s", msg)


class _Progress(trt.IProgressMonitor):
    """Logs each top-level build phase and, at most every few seconds, its step count."""

    INTERVAL_S = 5.0

    def __init__(self) -> None:
        trt.IProgressMonitor.__init__(self)
        self._lock = threading.Lock()
        self._steps: dict[str, int] = {}
        self._last = 0.0
        self._t0 = time.monotonic()

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with contextlib.suppress(Exception):
            with self._lock:
                self._steps[phase_name] = num_steps
            if not parent_phase:
                log.info("building TensorRT engine: %s (%d steps)", phase_name, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        with contextlib.suppress(Exception):
            now = time.monotonic()
            with self._lock:
                due = now - self._last >= self.INTERVAL_S
                if due:
                    self._last = now
                total = self._steps.get(phase_name, 0)
            if due:
                log.info(
                    "building TensorRT engine: %s %d/%d (%.0f s)", phase_name, step + 1, total, now - self._t0
                )
        return True  # never cancel the build

    def phase_finish(self, phase_name: str) -> None:
        with contextlib.suppress(Exception), self._lock:
            self._steps.pop(phase_name, None)


class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
    """INT8 entropy calibration on a folder of images, letterboxed and normalised as at run time."""

    def __init__(
        self, images: Sequence[Path], batch: int, height: int, width: int, swap_rb: bool, cache: Path
    ) -> None:
        trt.IInt8EntropyCalibrator2.__init__(self)
        self._images = list(images)
        self._batch = batch
        self._height, self._width = height, width
        self._swap_rb = swap_rb
        self._cache = cache
        self._host = np.empty((batch, 3, height, width), np.float32)
        self._device = 0
        self._decoded = self._decode()
        self._done = 0
        self.error: BaseException | None = None

    def _decode(self) -> Iterator[np.ndarray]:
        for path in self._images:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                log.warning("INT8 calibration: cannot read %s, skipped", path)
                continue
            yield letterbox(image, self._width, self._height)[0]

    def get_batch_size(self) -> int:
        return self._batch

    def get_batch(self, names: list[str]) -> list[int]:
        """Device pointers of the next batch (one per input name), or [] when the images are used up."""
        try:
            batch = [img for _, img in zip(range(self._batch), self._decoded, strict=False)]
            if not batch:
                return []
            for i in range(self._batch):  # a short last batch is filled by repeating its images
                to_input_tensor(batch[i % len(batch)], swap_rb=self._swap_rb, out=self._host[i])
            cudart = load_cudart()
            if not self._device:
                self._device = int(check(cudart.cudaMalloc(self._host.nbytes), "cudaMalloc"))
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            check(cudart.cudaMemcpy(self._device, self._host.ctypes.data, self._host.nbytes, kind), "copy")
            self._done += len(batch)
            log.info("INT8 calibration: %d/%d images", self._done, len(self._images))
            return [self._device for _ in names]
        except BaseException as exc:  # reported by _build after TensorRT returns
            self.error = exc
            return []

    # The stubs type the return as a buffer, but TensorRT's binding takes None as "no cache"
    # (pyInt8.cpp: `if (cacheRaw.is_none()) return nullptr;`), which is what must be returned here.
    # (`unused-ignore`: without the stubs, as in the repository-wide `mypy streamer`, TensorRT is Any.)
    def read_calibration_cache(self) -> bytes | None:  # type: ignore[override,unused-ignore]
        try:
            if self._cache.is_file():
                log.info("INT8 calibration: using the cache %s", self._cache)
                return self._cache.read_bytes()
        except BaseException as exc:
            self.error = exc
        return None

    def write_calibration_cache(self, cache: Buffer) -> None:
        try:
            atomic_write(self._cache, bytes(cache))
            log.info("INT8 calibration cache written: %s", self._cache)
        except BaseException as exc:
            self.error = exc

    def close(self) -> None:
        if self._device:
            check(load_cudart().cudaFree(self._device), "cudaFree")
            self._device = 0


# --------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class PlanModel(ModelInfo):
    """The model as `inspect_model` read it, and its file's hash (part of the plan cache's key)."""

    sha256: str = ""


def _require_tensorrt_10() -> None:
    major = trt.__version__.split(".", 1)[0]
    if major != "10":
        raise EngineError(
            f"yolostream's TensorRT backend is written for TensorRT 10; this is TensorRT {trt.__version__} "
            "(TensorRT 11 removed the FP16/INT8 builder flags and INT8 calibrators it uses): "
            "install tensorrt-cu12<11 (or tensorrt-cu13<11)"
        )


def read_model(path: Path, options: EngineOptions, info: ModelInfo | None = None) -> PlanModel:
    _require_tensorrt_10()
    if options.precision not in PRECISIONS:
        raise EngineError(
            f"precision {options.precision!r}: the TensorRT backend builds {', '.join(PRECISIONS)}"
        )
    info = info or inspect_model(path, options)
    info.warn_if_batch_fixed(options)
    return PlanModel(**{f.name: getattr(info, f.name) for f in fields(ModelInfo)}, sha256=file_sha256(path))


def _calibration_cache(model: PlanModel, build: TensorRTBuildOptions) -> Path:
    if build.calibration_cache is not None:
        return build.calibration_cache
    name = f"{model.path.stem}-{model.sha256[:16]}-{model.height}x{model.width}.cache"
    return cache_dir() / "calibration" / name


def _plan_key(
    model: PlanModel, options: EngineOptions, build: TensorRTBuildOptions, gpu: tuple[str, str]
) -> PlanKey | None:
    """The cache key, or None for INT8 whose calibration cache does not exist yet (always a build)."""
    calibration = None
    if options.precision == "int8":
        cache = _calibration_cache(model, build)
        if not cache.is_file():
            return None
        calibration = file_sha256(cache)
    opt = min(build.opt_batch or model.max_batch, model.max_batch)
    return PlanKey(
        onnx_sha256=model.sha256,
        tensorrt_version=trt.__version__,
        gpu_name=gpu[0],
        compute_capability=gpu[1],
        precision=options.precision,
        calibration_sha256=calibration,
        min_batch=model.max_batch if not model.dynamic_batch else 1,
        opt_batch=opt if model.dynamic_batch else model.max_batch,
        max_batch=model.max_batch,
        input_height=model.height,
        input_width=model.width,
        workspace_bytes=build.workspace_bytes,
    )


def _calibration_images(folder: Path | None, limit: int) -> list[Path]:
    if folder is None or not folder.is_dir():
        raise EngineError(
            f"INT8 needs a folder of calibration images or an existing calibration cache; "
            f"calibration_images is {folder}"
        )
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not images:
        raise EngineError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in the calibration folder {folder}")
    return images


def _build(model: PlanModel, options: EngineOptions, build: TensorRTBuildOptions) -> bytes:
    """Parse the ONNX file and build a serialized plan (minutes for a YOLOv7 on a big GPU)."""
    logger = TensorRTLogger()
    if not trt.init_libnvinfer_plugins(logger, ""):
        log.warning("TensorRT's plugin library did not initialise: EfficientNMS_TRT models will not parse")
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.path.read_bytes(), str(model.path)):
        errors = []
        for i in range(parser.num_errors):
            err: trt.ParserError = parser.get_error(i)
            errors.append(f"{err.desc()} (node {err.node()} {err.node_name()!r}, {err.node_operator()})")
        raise ModelError(f"TensorRT cannot parse {model.path}:\n  " + "\n  ".join(errors or ["no details"]))

    config = builder.create_builder_config()
    if build.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, build.workspace_bytes)
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 falls back to fp16 where a layer cannot be int8

    full = (3, model.height, model.width)
    if model.dynamic_batch:
        profile = builder.create_optimization_profile()
        opt = min(build.opt_batch or model.max_batch, model.max_batch)
        profile.set_shape(
            model.input.name,
            trt.Dims([1, *full]),
            trt.Dims([opt, *full]),
            trt.Dims([model.max_batch, *full]),
        )
        if config.add_optimization_profile(profile) < 0:
            raise EngineError(f"TensorRT rejected the optimisation profile batch 1..{model.max_batch}")

    calibrator = None
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        cache = _calibration_cache(model, build)
        images = (
            []
            if cache.is_file()
            else _calibration_images(build.calibration_images, build.calibration_max_images)
        )
        batch = build.calibration_batch if model.dynamic_batch else model.max_batch
        batch = min(batch, model.max_batch)
        calibrator = _EntropyCalibrator(images, batch, model.height, model.width, build.swap_rb, cache)
        config.int8_calibrator = calibrator
        if model.dynamic_batch:
            calib_profile = builder.create_optimization_profile()
            calib_dims = trt.Dims([batch, *full])
            calib_profile.set_shape(model.input.name, calib_dims, calib_dims, calib_dims)
            if not config.set_calibration_profile(calib_profile):
                raise EngineError(f"TensorRT rejected the calibration profile (batch {batch})")

    progress = _Progress()  # referenced here until the build ends: TensorRT does not keep it alive
    config.progress_monitor = progress
    log.info(
        "building a TensorRT %s engine for %s (%s, input %dx%d, batch <= %d): this takes minutes",
        trt.__version__, model.path.name, options.precision, model.width, model.height, model.max_batch,
    )  # fmt: skip
    t0 = time.monotonic()
    try:
        plan: trt.IHostMemory | None = builder.build_serialized_network(network, config)
    finally:
        del progress
        if calibrator is not None:
            calibrator.close()
    if calibrator is not None and calibrator.error is not None:
        raise EngineError(f"INT8 calibration failed: {calibrator.error}") from calibrator.error
    if plan is None:
        raise EngineError(
            f"TensorRT could not build an engine for {model.path} (its errors are logged above)"
        )
    log.info("TensorRT engine built in %.0f s", time.monotonic() - t0)
    # IHostMemory implements the buffer protocol (pybind11 `py::buffer_protocol()`); the stubs omit it.
    return bytes(cast("Buffer", plan))


def load_or_build(
    model: PlanModel, options: EngineOptions, build: TensorRTBuildOptions, gpu: tuple[str, str]
) -> tuple[bytes, Path, PlanKey, bool]:
    """(plan, its path in the cache, its key, whether it was built now rather than loaded)."""
    cache = PlanCache(build.cache_root)
    stem = model.path.stem
    key = _plan_key(model, options, build, gpu)
    if key is None:  # INT8 calibrating now: the key includes the calibration cache it writes
        plan = _build(model, options, build)
        key = _plan_key(model, options, build, gpu)
        if key is None:
            raise EngineError("INT8 calibration did not write a calibration cache")
        return plan, cache.store(stem, key, plan), key, True
    plan, path, built = cache.get_or_build(stem, key, lambda: _build(model, options, build))
    log.info("TensorRT engine %s: %s", "built and cached" if built else "loaded from the cache", path)
    return plan, path, key, built


def build_plan(model_path: Path, options: EngineOptions, build: TensorRTBuildOptions | None = None) -> Path:
    """Build (or find in the cache) the plan for `model_path` on the configured GPU; returns its path."""
    build = build or TensorRTBuildOptions()
    model = read_model(model_path, options)
    gpu = use_gpu(device_index(options.device))
    return load_or_build(model, options, build, gpu)[1]
