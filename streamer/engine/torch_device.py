"""The torch engine as a `DeviceEngine`: run by the CUDA executor on its streams and buffers.

The ONNX graph is converted for a fixed batch (`streamer.engine.torch_static`: constant-folded, no host
synchronisation inside the forward pass), moved to the GPU in fp32 with TF32 off, and called on torch
views of the executor's device buffers (``__cuda_array_interface__``, no copy) with the slot's CUDA stream
as torch's current stream (``torch.cuda.ExternalStream``). With ``cuda_graph`` (the default) the forward
pass is captured once per executor slot into a CUDA graph bound to that slot's buffers and replayed on
the slot's stream: one launch instead of hundreds of Python-driven kernel launches. Nothing waits: the
work is queued behind the slot's input copy and ahead of its output copy, where a TensorRT
``execute_async_v3`` would go. A partial batch runs padded to the engine's batch (rows past it are
ignored).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamer.engine.base import EngineOptions, ModelSpec
from streamer.engine.device import DeviceEngine, OutputLayout, TensorSpec
from streamer.engine.torch_static import convert_static
from streamer.errors import EngineError, ModelError

log = logging.getLogger(__name__)


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
    """Per executor slot: the CUDA graph captured on that slot's buffers."""

    def __init__(self) -> None:
        self.graph: Any = None
        self.bound: tuple[int, int] | None = None  # (input_ptr, output_ptr) the graph was captured on


class TorchDeviceEngine(DeviceEngine):
    name = "torch"
    layout = OutputLayout.GRID

    def __init__(self, model: Path, options: EngineOptions, *, cuda_graph: bool = True) -> None:
        import torch

        if not torch.cuda.is_available():
            raise EngineError("the torch device engine needs a CUDA GPU; this PyTorch sees none")
        if options.precision not in ("fp32", "fp16"):
            raise EngineError(
                f"the torch engine runs fp32 or fp16, not {options.precision!r} (int8 is TensorRT's)"
            )
        # fp16 through autocast: the exported graph's Cast nodes pin some tensors to fp32, so `.half()` on
        # the converted module fails; autocast runs convolutions and matmuls in fp16 and leaves the rest
        # in the dtype their inputs have. Inputs and outputs stay fp32 (the executor's buffers).
        self._half = options.precision == "fp16"
        torch.backends.cuda.matmul.allow_tf32 = False  # TF32 is the whole torch/ONNX Runtime gap on Hopper
        torch.backends.cudnn.allow_tf32 = False
        self._torch = torch
        self._device = torch.device(options.device if options.device.startswith("cuda") else "cuda")
        batch = options.max_batch
        module = convert_static(model, batch)
        self._module = module.to(self._device).eval()
        height, width = self._input_hw(model, options)
        with torch.inference_mode():
            y = self._call(torch.zeros((batch, 3, height, width), device=self._device))
        if y.ndim != 3 or y.shape[2] < 6:
            raise ModelError(f"{model}: output {tuple(y.shape)} is not the YOLOv7 --grid layout")
        self.spec = ModelSpec("images", height, width, batch, int(y.shape[2]), int(y.shape[1]))
        self.input = TensorSpec("images", "float32", (-1, 3, height, width))
        self.outputs = (TensorSpec("output", "float32", (-1, int(y.shape[1]), int(y.shape[2]))),)
        self.cuda_graph = cuda_graph
        log.info(
            "torch %s: %s on %s, %s, static batch %d, %s",
            torch.__version__,
            model.name,
            self._device,
            options.precision,
            batch,
            "CUDA graphs" if cuda_graph else "eager",
        )

    @staticmethod
    def _input_hw(model: Path, options: EngineOptions) -> tuple[int, int]:
        import onnx

        dims = onnx.load(str(model), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        h, w = (d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims[2:])
        if options.input_size is not None:
            return options.input_size
        return h or 640, w or 640

    def _call(self, x: Any) -> Any:
        if self._half:
            with self._torch.autocast(device_type="cuda", dtype=self._torch.float16):
                y = self._module(x)
        else:
            y = self._module(x)
        return y[0] if isinstance(y, (tuple, list)) else y

    def new_context(self) -> object:
        return _SlotState()

    def enqueue(
        self, context: object, batch: int, input_ptr: int, output_ptrs: Mapping[str, int], stream: int
    ) -> None:
        torch = self._torch
        spec = self.spec
        full = spec.max_batch  # the module's batch: a partial batch runs padded (the buffers are this big)
        x = torch.as_tensor(_CudaView(input_ptr, (full, 3, spec.height, spec.width)), device=self._device)
        out = torch.as_tensor(
            _CudaView(output_ptrs["output"], (full, spec.boxes, spec.outputs_per_box)), device=self._device
        )
        state: _SlotState = context  # type: ignore[assignment]
        if self.cuda_graph and state.bound != (input_ptr, output_ptrs["output"]):
            self._capture(state, x, out)
            state.bound = (input_ptr, output_ptrs["output"])
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)), torch.inference_mode():
            if state.graph is not None:
                state.graph.replay()
            else:
                out.copy_(self._call(x), non_blocking=True)

    def _capture(self, state: _SlotState, x: Any, out: Any) -> None:
        """Record the forward pass on these buffers into a CUDA graph (once per slot; synchronous)."""
        torch = self._torch
        torch.cuda.synchronize(self._device)
        side = torch.cuda.Stream(self._device)
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # warm-up outside the capture (cuDNN picks algorithms, allocator fills)
                out.copy_(self._call(x))
        torch.cuda.synchronize(self._device)
        graph = torch.cuda.CUDAGraph()
        # Each slot's graph gets its own memory pool: the slots' graphs run concurrently on their streams.
        with torch.inference_mode(), torch.cuda.graph(graph):
            out.copy_(self._call(x))
        state.graph = graph

    def close(self) -> None:
        self._module = None
        self._torch.cuda.empty_cache()
