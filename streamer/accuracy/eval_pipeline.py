"""The daemon's inference path, driven by the accuracy tools (`yolostream eval`, `yolostream parity`).

What they measure must be what is served, so the engine is opened exactly as the inference worker opens
it — `streamer.engine.select.open_executor`: the config's ``engine.backend`` (``auto`` resolved the same
way), ``device``, ``precision``, ``compile``, CUDA graphs and the executor (CPU, or CUDA streams with NMS's
first step on the GPU) — and detections are decoded by the worker's own `streamer.workers.results.decode`.
Overrides (``--backend``, ``--precision``, ``--compile``, ``--device``) replace the config's values before
that, so a comparison changes one setting and nothing else.

Frames are letterboxed as the daemon letterboxes them:

- ``cpu``: an RGB frame (PyAV's decoder, an image file) by the NumPy/OpenCV letterbox into the executor's
  host input, copied to the device by the executor — the daemon's path for CPU-decoded frames;
- ``cuda``: an NV12 picture in GPU memory (NVDEC) by the CUDA letterbox kernel
  (`streamer.preprocess.cuda_kernel`) straight into the executor's device input — the daemon's path for
  NVDEC frames. An RGB image evaluated this way is first converted to NV12 (BT.601 limited range, 4:2:0,
  as an H.264 encoder stores it) on the host and uploaded, so the kernel sees what NVDEC would hand it.

``auto`` is ``cuda`` when the executor runs on the GPU, else ``cpu``; an NVDEC frame with a CPU executor is
copied back and letterboxed by the kernel's NumPy model (`streamer.preprocess.nv12`), as the worker does.
`EngineSetup` says which engine, precision, preprocessing and device produced a result (report headers).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import cv2
import numpy as np

from streamer.engine.device import OutputLayout
from streamer.engine.executor import Executor
from streamer.errors import YolostreamError
from streamer.postprocess.nms import NmsParams, to_source_frame
from streamer.preprocess import LetterboxGeometry, letterbox, letterbox_geometry, to_input_tensor

if TYPE_CHECKING:
    from streamer.config import Config
    from streamer.sources.base import DeviceFrame

__all__ = [
    "PREPROCESS_MODES",
    "DeployedPipeline",
    "EngineSetup",
    "Overrides",
    "PipelineError",
    "Prepared",
    "open_pipeline",
    "rgb_to_nv12",
]

log = logging.getLogger(__name__)

PREPROCESS_MODES = ("auto", "cpu", "cuda")
PREPROCESS_TEXT = {
    "cpu": "CPU letterbox (NumPy/OpenCV) of RGB frames into the host input",
    "cuda": "CUDA letterbox kernel from NV12 into the device input (images: RGB -> NV12 BT.601 first)",
}
K = TypeVar("K")
Frame = Any
"""An RGB ``HxWx3`` uint8 array, a `DeviceFrame` (NV12 in GPU memory) or a `Prepared` input tensor."""


@dataclass(frozen=True)
class Prepared:
    """An input tensor ``3xHxW`` already letterboxed (parity's preprocessing stage), and its geometry."""

    tensor: np.ndarray
    geometry: LetterboxGeometry


class PipelineError(YolostreamError, ValueError):
    """The requested engine or preprocessing cannot run here."""


@dataclass(frozen=True, kw_only=True)
class Overrides:
    """Engine settings that replace the config's for one run (None: the config's)."""

    backend: str | None = None
    precision: str | None = None
    compile: str | None = None
    device: str | None = None
    preprocess: str = "auto"


@dataclass(frozen=True)
class EngineSetup:
    """What produced a set of numbers: the report header."""

    backend: str
    engine: str
    """The engine class, with its own description where it has one (e.g. ``fp16, compiled``)."""
    executor: str
    device: str
    precision: str
    preprocess: str
    """``cpu`` or ``cuda`` (see the module docstring)."""
    gpu_filter: bool

    def describe(self) -> str:
        where = "; NMS's confidence filter on the GPU" if self.gpu_filter else ""
        return (
            f"engine {self.backend} ({self.engine}) on {self.device}, precision {self.precision}, "
            f"{self.executor}{where}; preprocessing: {PREPROCESS_TEXT[self.preprocess]}"
        )


def deployed_config(cfg: Config, overrides: Overrides, conf: float) -> Config:
    """`cfg` with the overrides applied and the executor's GPU confidence filter at `conf`.

    The filter keeps the rows NMS's first step would keep (``objectness > conf``), so the tools' own
    threshold (eval: 0.001) must be the one the executor filters with.
    """
    given = {
        "backend": overrides.backend, "precision": overrides.precision,
        "compile": overrides.compile, "device": overrides.device,
    }  # fmt: skip
    engine = {k: v for k, v in given.items() if v}
    return cfg.model_copy(
        update={
            "engine": cfg.engine.model_copy(update=engine),
            "detection": cfg.detection.model_copy(update={"confidence": conf}),
        }
    )


def open_pipeline(
    cfg: Config, model: Path, nms: NmsParams, overrides: Overrides | None = None, *, keep_raw: bool = False
) -> DeployedPipeline:
    """The daemon's executor for `cfg` (with `overrides`), ready to run frames; close it when done."""
    from streamer.engine.select import choose_backend, open_executor

    overrides = overrides or Overrides()
    if overrides.preprocess not in PREPROCESS_MODES:
        raise PipelineError(
            f"unknown preprocessing {overrides.preprocess!r}; known: {', '.join(PREPROCESS_MODES)}"
        )
    run_cfg = deployed_config(cfg, overrides, nms.conf_thres)
    e = run_cfg.engine
    backend = choose_backend(e.backend, e.device)  # (logged; open_executor resolves it the same way)
    run_cfg = run_cfg.model_copy(update={"engine": e.model_copy(update={"backend": backend})})
    executor = open_executor(run_cfg, model)
    try:
        preprocess = overrides.preprocess
        if preprocess == "auto":
            preprocess = "cuda" if executor.on_gpu else "cpu"
        if preprocess == "cuda" and not executor.on_gpu:
            raise PipelineError(
                f"--preprocess cuda needs an engine on the GPU; {backend} on {e.device} runs on the CPU"
            )
        setup = _setup(run_cfg, backend, executor, preprocess)
        return DeployedPipeline(executor, setup, nms, run_cfg.model.channel_order == "bgr", keep_raw=keep_raw)
    except BaseException:
        executor.close()
        raise


def _setup(cfg: Config, backend: str, executor: Executor, preprocess: str) -> EngineSetup:
    engine = getattr(executor, "engine", None)  # (both executors keep it; the protocol does not name it)
    name = type(engine).__name__ if engine is not None else backend
    variant = getattr(engine, "variant", None)  # the torch device engine: "fp16, compiled, ..."
    if isinstance(variant, str) and variant:
        name = f"{name}: {variant}"
    precision: str = cfg.engine.precision
    if backend == "onnxruntime":
        precision = "as stored in the model file (onnxruntime does not apply engine.precision)"
    device = _gpu(cfg.engine.device) if executor.on_gpu else "cpu"
    return EngineSetup(backend, name, type(executor).__name__, device, precision, preprocess,
                       bool(getattr(executor, "gpu_filter", False)))  # fmt: skip


def _gpu_index(device: str) -> int:
    """N of ``cuda:N`` (also of the header's ``cuda:N (name)``); 0 for ``cuda`` and ``auto``."""
    match = re.match(r"cuda:(\d+)", device)
    return int(match.group(1)) if match else 0


def _gpu(device: str) -> str:
    """``cuda:N (GPU name)`` for the header; the config's word where CUDA cannot say more."""
    from streamer.cuda.runtime import load_cudart

    index = _gpu_index(device)
    try:
        _, props = load_cudart().cudaGetDeviceProperties(index)
        name = bytes(props.name).split(b"\0", 1)[0].decode(errors="replace")
    except Exception as exc:  # only the header's wording depends on it
        log.debug("no GPU name for %s: %s", device, exc)
        return device
    return f"cuda:{index} ({name})" if name else f"cuda:{index}"


@dataclass
class _Pending(Generic[K]):
    key: K
    geometry: LetterboxGeometry


class DeployedPipeline:
    """Frames → the executor's slots (batched up to the engine's largest batch) → detections.

    `run` yields ``(key, detections, raw)`` in the order the frames came: detections ``[K, 6]`` float32
    (x1, y1, x2, y2, score, class id) in source pixels, as the daemon publishes them; `raw` the image's
    whole ``[N, 5 + nc]`` output when `keep_raw` and the executor returned it (not where the GPU filtered
    the rows), else None.
    """

    def __init__(
        self, executor: Executor, setup: EngineSetup, nms: NmsParams, swap_rb: bool, *, keep_raw: bool = False
    ) -> None:
        self.executor, self.setup, self.nms, self.swap_rb = executor, setup, nms, swap_rb
        self.keep_raw = keep_raw
        spec = executor.spec
        self.width, self.height, self.max_batch = spec.width, spec.height, spec.max_batch
        self._canvas = np.empty((self.height, self.width, 3), np.uint8)
        self._device: _DeviceLetterbox | None = None

    def __enter__(self) -> DeployedPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, frames: Iterable[tuple[K, Frame]]) -> Iterator[tuple[K, np.ndarray, np.ndarray | None]]:
        slot: int | None = None
        items: list[_Pending[K]] = []
        on_device: list[int] = []
        for key, frame in frames:
            while slot is None:
                slot = self.executor.free_slot()
                if slot is None:
                    yield from self._collect(block=True)
            items.append(_Pending(key, self._fill(slot, len(items), frame, on_device)))
            if len(items) == self.max_batch:
                self.executor.submit(slot, items, on_device)
                slot, items, on_device = None, [], []
            yield from self._collect(block=False)
        if items and slot is not None:
            self.executor.submit(slot, items, on_device)
        while self.executor.inflight:
            yield from self._collect(block=True)

    def _fill(self, slot: int, index: int, frame: Frame, on_device: list[int]) -> LetterboxGeometry:
        if isinstance(frame, Prepared):
            self.executor.host_input(slot)[index] = frame.tensor
            return frame.geometry
        if isinstance(frame, np.ndarray):
            if self.setup.preprocess == "cuda":
                on_device.append(index)
                return self._kernel().image(frame, self.executor, slot, index)
            _, geometry = letterbox(frame, self.width, self.height, out=self._canvas)
            to_input_tensor(self._canvas, swap_rb=self.swap_rb, out=self.executor.host_input(slot)[index])
            return geometry
        if self.executor.on_gpu:  # an NVDEC frame: the kernel, on the device
            on_device.append(index)
            return self._kernel().device_frame(frame, self.executor, slot, index)
        return _host_nv12(frame, self.executor.host_input(slot)[index], self.width, self.height, self.swap_rb)

    def _kernel(self) -> _DeviceLetterbox:
        if self._device is None:
            index = _gpu_index(self.setup.device)
            self._device = _DeviceLetterbox(
                self.width, self.height, self.swap_rb, self.executor.input_dtype, index
            )
        return self._device

    def _collect(self, *, block: bool) -> Iterator[tuple[K, np.ndarray, np.ndarray | None]]:
        from streamer.workers.results import decode

        while (done := self.executor.done(timeout=None if block else 0.0)) is not None:
            batch, outputs = done
            items: list[_Pending[K]] = list(batch.items)
            dets = decode(outputs, self.executor, len(items), self.nms)
            grid = self.keep_raw and outputs.layout is OutputLayout.GRID
            raw = next(iter(outputs.tensors.values()), None) if grid else None  # ({} after the GPU filter)
            for i, item in enumerate(items):
                kept = raw[i].copy() if raw is not None else None
                yield item.key, to_source_frame(dets[i], item.geometry), kept
            if block:
                return

    def close(self) -> None:
        if self._device is not None:
            self._device.close()
            self._device = None
        self.executor.close()


def rgb_to_nv12(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """An RGB image as NV12 planes (BT.601 limited range, 4:2:0, as x264 stores a yuv420p frame).

    Odd sizes are padded by repeating the last column/row before subsampling (the planes keep the
    image's size: ``ceil(h / 2)`` chroma rows, as NVDEC gives them). Returns (Y ``[h, pitch]``,
    UV ``[ceil(h/2), pitch]``, pitch), pitch the even-rounded width.
    """
    h, w = rgb.shape[:2]
    padded = cv2.copyMakeBorder(rgb, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
    ph, pw = padded.shape[:2]
    flat = cv2.cvtColor(padded, cv2.COLOR_RGB2YUV_I420).ravel()  # planar: Y, then U, then V
    n, q = ph * pw, ph * pw // 4
    y = flat[:n].reshape(ph, pw)
    u = flat[n : n + q].reshape(ph // 2, pw // 2)
    v = flat[n + q : n + 2 * q].reshape(ph // 2, pw // 2)
    uv = np.empty((ph // 2, pw), np.uint8)
    uv[:, 0::2], uv[:, 1::2] = u, v
    return np.ascontiguousarray(y[:h]), uv[: (h + 1) // 2], pw


def _host_nv12(
    frame: DeviceFrame, out: np.ndarray, width: int, height: int, swap_rb: bool
) -> LetterboxGeometry:
    """An NVDEC frame copied to the host and letterboxed by the kernel's NumPy model (CPU executor)."""
    from streamer.cuda.runtime import check, load_cudart
    from streamer.preprocess.nv12 import YuvCoefficients, letterbox_nv12

    cudart = load_cudart()
    check(cudart.cudaStreamSynchronize(frame.stream), "cudaStreamSynchronize")
    rows = frame.height + (frame.height + 1) // 2
    nv12 = np.empty((rows, frame.pitch), np.uint8)
    kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    check(cudart.cudaMemcpy(nv12.ctypes.data, frame.y_ptr, frame.pitch * frame.height, kind), "copy Y")
    uv_bytes = frame.pitch * (rows - frame.height)
    check(cudart.cudaMemcpy(nv12[frame.height :].ctypes.data, frame.uv_ptr, uv_bytes, kind), "copy UV")
    coefficients = YuvCoefficients.for_frame(frame.colorspace, frame.color_range)
    _, geometry = letterbox_nv12(
        nv12[: frame.height], nv12[frame.height :], frame.width, frame.height, width, height, coefficients,
        swap_rb=swap_rb, dtype=out.dtype, out=out,
    )  # fmt: skip
    return geometry


class _DeviceLetterbox:
    """The daemon's CUDA letterbox kernel writing into an executor slot's device input (GPU only).

    Each picture is letterboxed synchronously (the kernel is waited for before the next picture), so that
    an NVDEC frame's planes, valid only until the decoder's next frame, are never read late.
    """

    def __init__(self, width: int, height: int, swap_rb: bool, dtype: str, device: int) -> None:
        from streamer.cuda.runtime import load_cudart
        from streamer.preprocess.cuda_kernel import LetterboxKernel

        self.width, self.height = width, height
        self.kernel = LetterboxKernel(width, height, swap_rb=swap_rb, dtype=dtype, device=device)
        self.cudart = load_cudart()
        self._upload: Any = None  # a DeviceArray for images converted to NV12, grown as needed

    def image(self, rgb: np.ndarray, executor: Executor, slot: int, index: int) -> LetterboxGeometry:
        from streamer.cuda.runtime import DeviceArray, check
        from streamer.preprocess.nv12 import YuvCoefficients

        h, w = rgb.shape[:2]
        y, uv, pitch = rgb_to_nv12(rgb)
        nbytes = y.nbytes + uv.nbytes
        if self._upload is None or self._upload.nbytes < nbytes:
            if self._upload is not None:
                self._upload.close()
            self._upload = DeviceArray((nbytes,), np.uint8)
        planes = np.concatenate([y.ravel(), uv.ravel()])
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.cudart.cudaMemcpy(self._upload.ptr, planes.ctypes.data, nbytes, kind), "copy NV12")
        coefficients = YuvCoefficients.for_stream("bt601", full_range=False)
        return self._launch(self._upload.ptr, self._upload.ptr + y.nbytes, pitch, w, h, coefficients,
                            executor, slot, index)  # fmt: skip

    def device_frame(
        self, frame: DeviceFrame, executor: Executor, slot: int, index: int
    ) -> LetterboxGeometry:
        from streamer.cuda.runtime import check
        from streamer.preprocess.nv12 import YuvCoefficients

        check(self.cudart.cudaStreamSynchronize(frame.stream), "cudaStreamSynchronize")  # decoded
        coefficients = YuvCoefficients.for_frame(frame.colorspace, frame.color_range)
        return self._launch(frame.y_ptr, frame.uv_ptr, frame.pitch, frame.width, frame.height, coefficients,
                            executor, slot, index)  # fmt: skip

    def _launch(
        self, y_ptr: int, uv_ptr: int, pitch: int, w: int, h: int, coefficients: Any,
        executor: Executor, slot: int, index: int,
    ) -> LetterboxGeometry:  # fmt: skip
        from streamer.cuda.runtime import check

        geometry = letterbox_geometry(w, h, self.width, self.height)
        out_ptr, stream = executor.device_input(slot)
        self.kernel.launch(y_ptr, uv_ptr, pitch, geometry, coefficients, out_ptr, index, stream)
        check(self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return geometry

    def close(self) -> None:
        if self._upload is not None:
            self._upload.close()
            self._upload = None
        self.kernel.close()
