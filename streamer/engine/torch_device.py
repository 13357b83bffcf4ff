"""The torch engine as a `DeviceEngine`: run by the CUDA executor on its streams and buffers.

How the module is made and run:

- **Converted once for every batch size** (`streamer.engine.torch_static.convert_any_batch`: folded,
  sync-free, batch-generic); a graph whose constants cannot be generalised is converted at `max_batch`
  alone and every batch runs padded to it (logged).
- **fp16 through autocast**: convolutions and matmuls in fp16, the box decoding at the end of the graph
  in the dtype its inputs have; input and output stay fp32 (the executor's buffers). TF32 is off.
- **Compiled** with ``torch.compile`` (inductor) when ``compile`` allows it, with inductor's caches under
  ``cache_dir()/inductor`` so that a restart loads the kernels instead of compiling them again; eager
  otherwise, and when compiling fails under ``auto`` (logged, with the reason).
- **A few batch sizes** (`batch_sizes`: 1, 2, 4, … up to `max_batch`): a batch of n runs at the smallest
  size ≥ n, so a partial batch does not pay for a full one. Each size is compiled (specialised) and, with
  ``cuda_graph``, captured once per executor slot into a CUDA graph bound to that slot's buffers
  (`bind`, called by the executor) and replayed on the slot's stream: one launch per batch. Rows past n
  are computed from whatever the buffer holds and ignored.

Nothing waits: the work is queued behind the slot's input and ahead of its output copy, where a TensorRT
``execute_async_v3`` would go.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streamer.engine.base import EngineOptions, ModelSpec, batch_sizes
from streamer.engine.device import DeviceEngine, OutputLayout, TensorSpec
from streamer.engine.model_info import ModelInfo, inspect_model
from streamer.engine.torch_static import NotBatchGeneric, convert_any_batch, convert_static
from streamer.errors import EngineError, ModelError
from streamer.paths import cache_dir

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")


class _CudaView:
    """Exposes device memory to torch.as_tensor via the CUDA array interface (no stream sync)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str = "<f4") -> None:
        self.__cuda_array_interface__ = {
            "shape": shape,
            "typestr": typestr,
            "data": (ptr, False),
            "version": 2,
        }


class _SlotState:
    """Per executor slot: the buffers it is bound to and a CUDA graph per batch size on them."""

    def __init__(self) -> None:
        self.bound: tuple[int, int] | None = None  # (input_ptr, output_ptr)
        self.graphs: dict[int, Any] = {}
        self.pool: Any = None  # one memory pool for the slot's graphs: they never run at the same time


def inductor_cache() -> Path:
    """Where inductor keeps compiled kernels for yolostream (set before the first compile)."""
    return cache_dir() / "inductor"


class TorchDeviceEngine(DeviceEngine):
    name = "torch"
    layout = OutputLayout.GRID

    def __init__(
        self,
        model: Path,
        options: EngineOptions,
        *,
        cuda_graph: bool = True,
        compile: str = "auto",
        sizes: Sequence[int] | None = None,
        info: ModelInfo | None = None,
    ) -> None:
        # The conversion (`convert_any_batch`) rewrites a fixed batch away: the config's max_batch holds.
        info = (info or inspect_model(model, options)).any_batch(options.max_batch)
        info.require_grid(self.name)  # before a conversion and compile of a minute or more
        import torch

        if not torch.cuda.is_available():
            raise EngineError("the torch device engine needs a CUDA GPU; this PyTorch sees none")
        if options.precision not in ("fp32", "fp16"):
            raise EngineError(
                f"the torch engine runs fp32 or fp16, not {options.precision!r} (int8 is TensorRT's)"
            )
        if compile not in COMPILE_MODES:
            raise EngineError(f"compile must be one of {', '.join(COMPILE_MODES)}, not {compile!r}")
        self._half = options.precision == "fp16"
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 is the whole torch/ONNX Runtime gap on Hopper
        torch.backends.cudnn.allow_tf32 = False
        self._torch = torch
        self._device = torch.device(options.device if options.device.startswith("cuda") else "cuda")
        started = time.perf_counter()
        module, self.sizes = self._convert(model, options.max_batch, sizes)
        self._module = module.to(self._device).eval()
        self._forward: Any = self._eager
        self.compiled = False
        height, width = info.height, info.width
        if compile != "off":
            self._compile(compile)
        y = self._warm_up(height, width, compile)
        if y.ndim != 3 or y.shape[2] < 6:
            raise ModelError(f"{model}: output {tuple(y.shape)} is not the YOLOv7 --grid layout")
        name = info.input.name
        self.spec = ModelSpec(name, height, width, options.max_batch, int(y.shape[2]), int(y.shape[1]))
        self.input = TensorSpec(name, "float32", (-1, 3, height, width))
        self.outputs = (TensorSpec("output", "float32", (-1, int(y.shape[1]), int(y.shape[2]))),)
        self.cuda_graph = cuda_graph
        self.variant = (
            f"{options.precision}, {'compiled' if self.compiled else 'eager'}"
            f"{', CUDA graphs' if cuda_graph else ''}, batch sizes {list(self.sizes)}"
        )
        log.info(
            "torch %s: %s on %s, %s; ready in %.1f s",
            torch.__version__, model.name, self._device, self.variant, time.perf_counter() - started,
        )  # fmt: skip

    # -- building ----------------------------------------------------------------------------------

    @staticmethod
    def _convert(model: Path, max_batch: int, sizes: Sequence[int] | None) -> tuple[Any, tuple[int, ...]]:
        wanted = batch_sizes(max_batch, sizes)
        try:
            return convert_any_batch(model), wanted
        except NotBatchGeneric as exc:
            log.warning(
                "%s: the graph cannot run at any batch size (%s); converted for batch %d alone, "
                "smaller batches run padded to it",
                model.name, exc, max_batch,
            )  # fmt: skip
            return convert_static(model, max_batch), (max_batch,)

    def _eager(self, x: Any) -> Any:
        if self._half:
            with self._torch.autocast(device_type="cuda", dtype=self._torch.float16):
                y = self._module(x)
        else:
            y = self._module(x)
        y = y[0] if isinstance(y, (tuple, list)) else y
        return y.float()

    def _compile(self, mode: str) -> None:
        """``torch.compile`` the forward pass (specialised per batch size), or say why not."""
        torch = self._torch
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache())  # (read when inductor first compiles)
        try:
            import torch._dynamo

            # One specialisation per batch size, none dynamic: each size gets kernels of its own.
            torch._dynamo.config.automatic_dynamic_shapes = False
            config = torch._dynamo.config
            limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
            setattr(config, limit, max(getattr(config, limit), len(self.sizes) + 4))
            # (A dynamic batch would compile once, but inductor then guards on int32 indexing and refuses
            # batches whose tensors exceed 2**31 elements: 62 images at 640.)
            self._forward = torch.compile(self._eager, dynamic=False, fullgraph=True)
            self.compiled = True
        except Exception as exc:  # no Triton, no compiler toolchain, an unsupported op
            self._not_compiled(mode, exc)

    def _not_compiled(self, mode: str, exc: BaseException) -> None:
        if mode == "on":
            raise EngineError(f"torch.compile failed ({type(exc).__name__}: {exc})") from exc
        log.warning("torch.compile is not used (%s: %s); running eager", type(exc).__name__, exc)
        self._forward, self.compiled = self._eager, False

    def _warm_up(self, height: int, width: int, mode: str) -> Any:
        """Run every batch size once (this is when each size compiles); returns the last output."""
        torch = self._torch
        y = None
        for size in self.sizes:
            x = torch.zeros((size, 3, height, width), device=self._device)
            started = time.perf_counter()
            with torch.inference_mode():
                try:
                    y = self._forward(x)
                except Exception as exc:
                    if not self.compiled:
                        raise
                    self._not_compiled(mode, exc)
                    y = self._forward(x)
            torch.cuda.synchronize(self._device)
            if self.compiled:
                log.info("torch.compile: batch %d ready in %.1f s", size, time.perf_counter() - started)
        return y

    # -- running -----------------------------------------------------------------------------------

    def size_for(self, batch: int) -> int:
        """The batch size a batch of `batch` images runs at (the smallest compiled one that holds it)."""
        for size in self.sizes:
            if size >= batch:
                return size
        raise EngineError(f"batch of {batch} is more than the engine's {self.sizes[-1]}")

    def new_context(self) -> object:
        return _SlotState()

    def bind(self, context: object, input_ptr: int, output_ptrs: Mapping[str, int]) -> None:
        """Capture the slot's CUDA graphs on its buffers, one per batch size (synchronous, at start)."""
        if not self.cuda_graph:
            return
        state: _SlotState = context  # type: ignore[assignment]
        state.graphs.clear()
        state.bound = (input_ptr, output_ptrs["output"])
        for size in self.sizes:
            x, out = self._views(size, input_ptr, output_ptrs["output"])
            state.graphs[size] = self._capture(state, x, out)

    def _views(self, size: int, input_ptr: int, output_ptr: int) -> tuple[Any, Any]:
        torch, spec = self._torch, self.spec
        x = torch.as_tensor(_CudaView(input_ptr, (size, 3, spec.height, spec.width)), device=self._device)
        out = torch.as_tensor(
            _CudaView(output_ptr, (size, spec.boxes, spec.outputs_per_box)), device=self._device
        )
        return x, out

    def enqueue(
        self, context: object, batch: int, input_ptr: int, output_ptrs: Mapping[str, int], stream: int
    ) -> None:
        torch = self._torch
        size = self.size_for(batch)
        state: _SlotState = context  # type: ignore[assignment]
        if self.cuda_graph and state.bound != (input_ptr, output_ptrs["output"]):
            self.bind(context, input_ptr, output_ptrs)
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)), torch.inference_mode():
            graph = state.graphs.get(size)
            if graph is not None:
                graph.replay()
            else:
                x, out = self._views(size, input_ptr, output_ptrs["output"])
                out.copy_(self._forward(x), non_blocking=True)

    def _capture(self, state: _SlotState, x: Any, out: Any) -> Any:
        """Record the forward pass on these buffers into a CUDA graph (synchronous)."""
        torch = self._torch
        torch.cuda.synchronize(self._device)
        side = torch.cuda.Stream(self._device)
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # warm-up outside the capture (cuDNN picks algorithms, allocator fills)
                out.copy_(self._forward(x))
        torch.cuda.synchronize(self._device)
        if state.pool is None:
            state.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=state.pool):
            out.copy_(self._forward(x))
        return graph

    def close(self) -> None:
        self._module = None
        self._forward = None
        self._torch.cuda.empty_cache()
