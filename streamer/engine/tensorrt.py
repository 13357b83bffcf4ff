"""TensorRT backend: runs a plan on the executor's streams (`TensorRTEngine`).

The run side of the TensorRT backend; `streamer.engine.tensorrt_build` builds the plan and keeps it in the
plan cache (`TensorRTEngine` loads or builds one through it, as `yolostream build` does ahead of time).
Written against the TensorRT 10 Python API and type-checked with mypy against ``tensorrt-stubs``
(`tests/engine/trt_typecheck.py`). TensorRT cannot be installed on any machine the project has, so
**none of this module has ever been executed**; see docs/tensorrt.md for what was verified and how.

At run time there is one `IExecutionContext` per executor slot (`new_context`); `enqueue` sets the input
shape and every tensor address and calls ``execute_async_v3`` on the slot's stream. ONNX-NMS outputs
have a data-dependent row count: they get an output allocator that serves the executor's buffer, which
is first filled with NaN on the stream so rows past the valid ones are recognisable (see `enqueue`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import tensorrt as trt

from streamer.cuda.runtime import check, load_cudart
from streamer.engine.base import EngineOptions, ModelSpec
from streamer.engine.device import DeviceEngine, OutputLayout, TensorSpec
from streamer.engine.model_info import ModelInfo, describe_outputs_short
from streamer.engine.plan_cache import PlanCache

# Importing the build module also refuses a `tensorrt` without code (type stubs only) with an ImportError.
from streamer.engine.tensorrt_build import (
    PlanModel,
    TensorRTBuildOptions,
    TensorRTLogger,
    device_index,
    load_or_build,
    read_model,
    use_gpu,
)
from streamer.errors import EngineError, ModelError

__all__ = ["TensorRTEngine"]

log = logging.getLogger(__name__)

_DTYPE_NAMES = {
    trt.DataType.FLOAT: "float32",
    trt.DataType.HALF: "float16",
    trt.DataType.INT32: "int32",
    trt.DataType.INT64: "int64",
}
_ITEMSIZE = {"float32": 4, "float16": 2, "int32": 4, "int64": 8}


def _dims(d: trt.Dims) -> tuple[int, ...]:
    return tuple(d[i] for i in range(len(d)))


# ------------------------------------------------------------------------------------------- outputs


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
        info = read_model(model, options, info)
        gpu = use_gpu(device_index(options.device))
        plan, path, key, built = load_or_build(info, options, build, gpu)
        self._logger = TensorRTLogger()
        trt.init_libnvinfer_plugins(self._logger, "")
        self._runtime: trt.Runtime | None = trt.Runtime(self._logger)
        engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(plan)
        if engine is None and not built:
            log.warning("TensorRT cannot deserialize the cached engine %s: rebuilding it", path)
            PlanCache(build.cache_root).discard(info.path.stem, key)
            plan, path, key, built = load_or_build(info, options, build, gpu)
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

    def _io(self, engine: trt.ICudaEngine, info: PlanModel) -> tuple[TensorSpec, tuple[TensorSpec, ...]]:
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

    def _model_spec(self, info: PlanModel) -> ModelSpec:
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
