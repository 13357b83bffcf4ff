"""TensorRT backend: builds an engine from the ONNX file, caches the plan, runs it on the executor's streams.

Written against the TensorRT 10 Python API and type-checked with mypy against ``tensorrt-stubs``
(`tests/engine/trt_typecheck.py`). TensorRT cannot be installed on any machine the project has, so
**none of this module has ever been executed**; see docs/tensorrt.md for what was verified and how.

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

At run time there is one `IExecutionContext` per executor slot (`new_context`); `enqueue` sets the input
shape and every tensor address and calls ``execute_async_v3`` on the slot's stream. ONNX-NMS outputs
have a data-dependent row count: they get an output allocator that serves the executor's buffer, which
is first filled with NaN on the stream so rows past the valid ones are recognisable (see `enqueue`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, cast

import cv2
import numpy as np
import tensorrt as trt

from streamer.cuda.runtime import check, load_cudart
from streamer.engine.base import EngineOptions, ModelSpec
from streamer.engine.device import DeviceEngine, OutputLayout, TensorSpec
from streamer.engine.model_info import ModelInfo, describe_outputs_short, inspect_model
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

__all__ = ["TensorRTBuildOptions", "TensorRTEngine", "build_plan"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_DTYPE_NAMES = {
    trt.DataType.FLOAT: "float32",
    trt.DataType.HALF: "float16",
    trt.DataType.INT32: "int32",
    trt.DataType.INT64: "int64",
}
_ITEMSIZE = {"float32": 4, "float16": 2, "int32": 4, "int64": 8}
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


def _device_index(device: str) -> int:
    if device in ("auto", "cuda"):
        return 0
    if device.startswith("cuda:"):
        return int(device.split(":", 1)[1])
    raise EngineError(f"the TensorRT backend runs on a CUDA GPU; engine.device is {device!r}")


def _gpu(index: int) -> tuple[str, str]:
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


class _Logger(trt.ILogger):
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


class _PreallocatedOutput(trt.IOutputAllocator):
    """Serves the executor's buffer for an output whose row count depends on the data (ONNX NMS)."""

    def __init__(self, capacity: int) -> None:
        trt.IOutputAllocator.__init__(self)
        self.capacity = capacity
        self.ptr = 0
        self.shape: tuple[int, ...] = ()

    def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int | None:
        if size > self.capacity or not self.ptr:
            log.error("TensorRT wants %d bytes for %s, the buffer holds %d", size, tensor_name, self.capacity)
            return None
        return self.ptr

    def reallocate_output_async(
        self, tensor_name: str, memory: int, size: int, alignment: int, stream: int
    ) -> int | None:
        return self.reallocate_output(tensor_name, memory, size, alignment)

    def notify_shape(self, tensor_name: str, shape: trt.Dims) -> None:
        self.shape = _dims(shape)


# --------------------------------------------------------------------------------------------- model


def _dims(d: trt.Dims) -> tuple[int, ...]:
    return tuple(d[i] for i in range(len(d)))


@dataclass(frozen=True)
class _Model(ModelInfo):
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


def _read_model(path: Path, options: EngineOptions, info: ModelInfo | None = None) -> _Model:
    _require_tensorrt_10()
    if options.precision not in PRECISIONS:
        raise EngineError(
            f"precision {options.precision!r}: the TensorRT backend builds {', '.join(PRECISIONS)}"
        )
    info = info or inspect_model(path, options)
    info.warn_if_batch_fixed(options)
    return _Model(**{f.name: getattr(info, f.name) for f in fields(ModelInfo)}, sha256=file_sha256(path))


def _calibration_cache(model: _Model, build: TensorRTBuildOptions) -> Path:
    if build.calibration_cache is not None:
        return build.calibration_cache
    name = f"{model.path.stem}-{model.sha256[:16]}-{model.height}x{model.width}.cache"
    return cache_dir() / "calibration" / name


def _plan_key(
    model: _Model, options: EngineOptions, build: TensorRTBuildOptions, gpu: tuple[str, str]
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


def _build(model: _Model, options: EngineOptions, build: TensorRTBuildOptions) -> bytes:
    """Parse the ONNX file and build a serialized plan (minutes for a YOLOv7 on a big GPU)."""
    logger = _Logger()
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


def _load_or_build(
    model: _Model, options: EngineOptions, build: TensorRTBuildOptions, gpu: tuple[str, str]
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
    model = _read_model(model_path, options)
    gpu = _gpu(_device_index(options.device))
    return _load_or_build(model, options, build, gpu)[1]


# -------------------------------------------------------------------------------------------- engine


class _Context:
    """One executor slot's execution context and the allocators of its data-dependent outputs."""

    def __init__(self, context: trt.IExecutionContext, allocators: dict[str, _PreallocatedOutput]) -> None:
        self.context: trt.IExecutionContext | None = context
        self.allocators = allocators

    def close(self) -> None:
        self.context = None
        self.allocators = {}


class TensorRTEngine(DeviceEngine):
    """A built TensorRT engine, run by the CUDA executor (one execution context per slot)."""

    name = "tensorrt"

    def __init__(
        self,
        model: Path,
        options: EngineOptions,
        build: TensorRTBuildOptions | None = None,
        *,
        info: ModelInfo | None = None,
    ) -> None:
        build = build or TensorRTBuildOptions()
        info = _read_model(model, options, info)
        gpu = _gpu(_device_index(options.device))
        plan, path, key, built = _load_or_build(info, options, build, gpu)
        self._logger = _Logger()
        trt.init_libnvinfer_plugins(self._logger, "")
        self._runtime: trt.Runtime | None = trt.Runtime(self._logger)
        engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(plan)
        if engine is None and not built:
            log.warning("TensorRT cannot deserialize the cached engine %s: rebuilding it", path)
            PlanCache(build.cache_root).discard(info.path.stem, key)
            plan, path, key, built = _load_or_build(info, options, build, gpu)
            engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(f"TensorRT cannot deserialize the engine it just built ({path})")
        self._engine: trt.ICudaEngine | None = engine
        self._contexts: list[_Context] = []
        self._info = info
        self.layout = info.layout
        self.input, self.outputs = self._io(engine, info)
        self._dynamic_batch = info.dynamic_batch
        self._data_dependent = {o.name for o in self.outputs if info.layout is OutputLayout.ONNX_NMS}
        self.spec = self._model_spec(info)
        log.info(
            "TensorRT %s engine for %s on %s (sm %s): %s, input %dx%d, batch <= %d, layout %s",
            trt.__version__, model.name, gpu[0], gpu[1], options.precision, info.width, info.height,
            info.max_batch, info.layout.value,
        )  # fmt: skip

    def _io(self, engine: trt.ICudaEngine, info: _Model) -> tuple[TensorSpec, tuple[TensorSpec, ...]]:
        """Input and output specs from the engine itself, outputs in the layout's order."""
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [info.input.name] or set(outputs) != {o.name for o in info.outputs}:
            raise EngineError(
                f"the engine's tensors (inputs {inputs}, outputs {outputs}) do not match the ONNX graph's "
                f"(input {info.input.name!r}, outputs {describe_outputs_short(info.outputs)})"
            )
        # Output sizes as TensorRT resolves them for the largest batch, on a scratch context.
        scratch: trt.IExecutionContext | None = engine.create_execution_context()
        if scratch is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        full = (info.max_batch, 3, info.height, info.width)
        if info.dynamic_batch and not scratch.set_input_shape(info.input.name, full):
            raise EngineError(f"the engine refuses input shape {full}")
        specs = []
        for onnx_spec in info.outputs:
            name = onnx_spec.name
            dtype = self._dtype(engine, name)
            shape = _dims(scratch.get_tensor_shape(name))
            if info.layout is OutputLayout.ONNX_NMS:  # [M, 7], M data-dependent: capacity per image
                nbytes = scratch.get_max_output_size(name)
                if nbytes <= 0:
                    raise EngineError(f"TensorRT gives no upper bound for the rows of {name!r}")
                rows = nbytes // (7 * _ITEMSIZE[dtype])
                per_image = max(1, math.ceil(rows / info.max_batch))
                specs.append(TensorSpec(name, dtype, (-1, per_image, 7)))
            else:
                if len(shape) != len(onnx_spec.shape) or any(d < 0 for d in shape[1:]):
                    raise EngineError(f"output {name!r} has shape {shape} for batch {info.max_batch}")
                specs.append(TensorSpec(name, dtype, (-1, *shape[1:])))
        del scratch
        in_dtype = self._dtype(engine, info.input.name)
        return TensorSpec(info.input.name, in_dtype, (-1, 3, info.height, info.width)), tuple(specs)

    @staticmethod
    def _dtype(engine: trt.ICudaEngine, name: str) -> str:
        dtype = engine.get_tensor_dtype(name)
        if dtype not in _DTYPE_NAMES:
            raise EngineError(f"tensor {name!r} is {dtype.name}: yolostream handles float32/16, int32/64")
        return _DTYPE_NAMES[dtype]

    def _model_spec(self, info: _Model) -> ModelSpec:
        if info.layout is OutputLayout.GRID:
            _, boxes, per_box = self.outputs[0].shape
            return ModelSpec(info.input.name, info.height, info.width, info.max_batch, per_box, boxes)
        if info.num_classes is None:
            raise ModelError(
                f"{info.path}: cannot tell how many classes this end-to-end model scores "
                f"(outputs: {describe_outputs_short(info.outputs)})"
            )
        boxes = self.outputs[1 if info.layout is OutputLayout.EFFICIENT_NMS else 0].shape[1]
        return ModelSpec(
            info.input.name, info.height, info.width, info.max_batch, 5 + info.num_classes, boxes
        )

    def new_context(self) -> object:
        engine = self._live()
        context: trt.IExecutionContext | None = engine.create_execution_context()
        if context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        allocators = {}
        for spec in self.outputs:
            if spec.name in self._data_dependent:
                allocator = _PreallocatedOutput(
                    math.prod(spec.shape_for(self.spec.max_batch)) * _ITEMSIZE[spec.dtype]
                )
                if not context.set_output_allocator(spec.name, allocator):
                    raise EngineError(f"TensorRT refused an output allocator for {spec.name!r}")
                allocators[spec.name] = allocator
        state = _Context(context, allocators)
        self._contexts.append(state)
        return state

    def enqueue(
        self, context: object, batch: int, input_ptr: int, output_ptrs: Mapping[str, int], stream: int
    ) -> None:
        """Set shapes and addresses, then ``execute_async_v3`` on `stream` (no synchronisation).

        ONNX-NMS outputs are first filled with NaN on the stream (``cudaMemsetAsync`` 0xFF), so after the
        copy to the host the rows past the valid ones have a NaN batch index and
        `streamer.postprocess.end2end.onnx_nms_detections` skips them. (TensorRT itself may wait for the
        row count before ``execute_async_v3`` returns: data-dependent shapes are known on the host.)
        """
        if not isinstance(context, _Context) or context.context is None:
            raise EngineError("enqueue needs a live context from this engine's new_context()")
        ctx = context.context
        if not 1 <= batch <= self.spec.max_batch:
            raise EngineError(f"batch of {batch} outside the engine's 1..{self.spec.max_batch}")
        if self._dynamic_batch:
            shape = (batch, 3, self.spec.height, self.spec.width)
            if not ctx.set_input_shape(self.input.name, shape):
                raise EngineError(f"the engine refuses input shape {shape}")
        if not ctx.set_tensor_address(self.input.name, input_ptr):
            raise EngineError(f"TensorRT refused the address of {self.input.name!r}")
        for spec in self.outputs:
            try:
                ptr = output_ptrs[spec.name]
            except KeyError:
                raise EngineError(
                    f"no buffer for output {spec.name!r} (given: {sorted(output_ptrs)})"
                ) from None
            allocator = context.allocators.get(spec.name)
            if allocator is not None:
                allocator.ptr = ptr
                nbytes = math.prod(spec.shape_for(batch)) * _ITEMSIZE[spec.dtype]
                check(load_cudart().cudaMemsetAsync(ptr, 0xFF, nbytes, stream), "cudaMemsetAsync")
            if not ctx.set_tensor_address(spec.name, ptr):
                raise EngineError(f"TensorRT refused the address of {spec.name!r}")
        if not ctx.execute_async_v3(stream):
            raise EngineError(f"TensorRT execute_async_v3 failed for a batch of {batch} (see the log)")

    def _live(self) -> trt.ICudaEngine:
        if self._engine is None:
            raise EngineError("the TensorRT engine is closed")
        return self._engine

    def close(self) -> None:
        """Release the execution contexts, then the engine, then the runtime (TensorRT's order)."""
        for state in self._contexts:
            state.close()
        self._contexts.clear()
        self._engine = None
        self._runtime = None
