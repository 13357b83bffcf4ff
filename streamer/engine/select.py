"""Pick the backend (``engine.backend: auto`` included) and pair its engine with the right executor.

- ``tensorrt``: `TensorRTEngine` (a `DeviceEngine`) on the `CudaExecutor`;
- ``torch`` on a GPU: `TorchDeviceEngine` on the `CudaExecutor`; on the CPU: `TorchEngine` on the CPU
  `Executor` (the parity reference);
- ``onnxruntime``: `OnnxRuntimeEngine` on the CPU `Executor` (the CUDA execution provider when
  onnxruntime-gpu is installed).

``auto`` prefers tensorrt, then torch on CUDA, then onnxruntime, and logs what it picked and why.
Every import happens here, in the inference worker, only for the backend that is used.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.engine import load_engine
from streamer.engine.base import EngineOptions
from streamer.engine.device import DeviceEngine
from streamer.engine.executor import CpuExecutor, Executor
from streamer.engine.model_info import inspect_model
from streamer.errors import EngineError

if TYPE_CHECKING:
    from streamer.config import Config

log = logging.getLogger(__name__)


def _tensorrt_usable() -> str | None:
    """Why TensorRT cannot be used here, or None if it can."""
    if not _nvidia_driver():
        return "no NVIDIA driver is loaded"
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed"
    try:
        import tensorrt
    except Exception as exc:  # a broken install raises anything
        return f"tensorrt does not import ({exc})"
    if not hasattr(tensorrt, "Builder"):  # the type stubs alone leave an empty namespace package
        return "only TensorRT's type stubs are installed, not TensorRT"
    if not str(getattr(tensorrt, "__version__", "")).startswith("10."):
        return f"TensorRT {getattr(tensorrt, '__version__', '?')} is installed; yolostream needs TensorRT 10"
    return _cuda_usable()


def _cuda_usable() -> str | None:
    if importlib.util.find_spec("cuda") is None:
        return "cuda-python is not installed (pip install 'yolostream[gpu]')"
    from streamer.cuda.runtime import load_cudart

    cudart = load_cudart()
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count == 0:
        return "no CUDA GPU is visible"
    return None


def _nvidia_driver() -> bool:
    """Whether an NVIDIA driver is loaded: checked before importing torch (hundreds of MiB) to ask CUDA."""
    return Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))


def _torch_cuda_usable() -> str | None:
    if not _nvidia_driver():
        return "no NVIDIA driver is loaded"
    for package in ("torch", "onnx2torch"):
        if importlib.util.find_spec(package) is None:
            return f"{package} is not installed"
    import torch

    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU"
    return _cuda_usable()


def choose_backend(backend: str, device: str) -> str:
    """The backend to use for `backend` (resolving ``auto``), with the reason logged."""
    if backend != "auto":
        return backend
    if device == "cpu":
        log.info("engine backend auto -> onnxruntime (engine.device is cpu)")
        return "onnxruntime"
    reasons = []
    if (why := _tensorrt_usable()) is None:
        log.info("engine backend auto -> tensorrt")
        return "tensorrt"
    reasons.append(f"not tensorrt: {why}")
    if (why := _torch_cuda_usable()) is None:
        log.info("engine backend auto -> torch on CUDA (%s)", reasons[0])
        return "torch"
    reasons.append(f"not torch: {why}")
    log.info("engine backend auto -> onnxruntime (%s)", "; ".join(reasons))
    return "onnxruntime"


def engine_options(cfg: Config) -> EngineOptions:
    e = cfg.engine
    return EngineOptions(device=e.device, precision=e.precision, max_batch=e.max_batch, threads=e.threads,
                         input_size=cfg.model.input_size)  # fmt: skip


def tensorrt_settings(cfg: Config) -> dict[str, Any]:
    """The config's TensorRT build settings, as keyword arguments of `TensorRTBuildOptions`."""
    e = cfg.engine
    return {
        "workspace_bytes": e.workspace_mb * 2**20 if e.workspace_mb else None,
        "opt_batch": e.opt_batch,
        "calibration_images": e.calibration_images,
        "swap_rb": cfg.model.channel_order == "rgb",
    }


def open_executor(cfg: Config, model: Path) -> Executor:
    """A ready executor, owning its engine, for the config's backend (``auto`` resolved here).

    On the GPU the executor runs NMS's first step (the confidence filter) on the device for grid models.
    """
    options, slots = engine_options(cfg), cfg.engine.inflight
    info = inspect_model(model, options)  # once, for whichever backend runs it
    backend = choose_backend(cfg.engine.backend, options.device)
    on_gpu = options.device != "cpu"
    conf = cfg.detection.confidence
    if backend == "tensorrt":
        from streamer.engine.cuda_executor import CudaExecutor
        from streamer.engine.tensorrt import TensorRTEngine
        from streamer.engine.tensorrt_build import TensorRTBuildOptions

        build = TensorRTBuildOptions(**tensorrt_settings(cfg))
        engine: DeviceEngine = TensorRTEngine(model, options, build, info=info)
        return CudaExecutor(
            engine, slots=slots, device=_index(options.device), conf=conf, owns_engine=True,
            concurrent=cfg.engine.concurrent_batches,
        )  # fmt: skip
    if backend == "torch" and on_gpu and (options.device != "auto" or _torch_cuda_usable() is None):
        from streamer.engine.cuda_executor import CudaExecutor
        from streamer.engine.torch_device import TorchDeviceEngine

        e = cfg.engine
        engine = TorchDeviceEngine(
            model, options, cuda_graph=e.cuda_graphs, compile=e.compile, sizes=e.batch_sizes, info=info
        )
        return CudaExecutor(
            engine, slots=slots, device=_index(options.device), conf=conf, owns_engine=True,
            concurrent=cfg.engine.concurrent_batches,
        )  # fmt: skip
    if backend in ("onnxruntime", "torch"):
        if backend == "onnxruntime" and options.precision != "fp32":
            log.warning(
                "engine.precision %s is not applied by onnxruntime: it runs the model with the types it was "
                "exported with (fp16 and int8 are for tensorrt and torch on CUDA)",
                options.precision,
            )
        return CpuExecutor(load_engine(backend, model, options, info), slots=slots, owns_engine=True)
    raise EngineError(f"unknown engine backend {backend!r}")


def _index(device: str) -> int:
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
