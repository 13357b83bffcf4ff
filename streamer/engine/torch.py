"""PyTorch backend: the ONNX graph converted to a torch module with onnx2torch, on the CPU or CUDA.

It is the PyTorch reference that deployments are compared against (``yolostream parity``) and a GPU
engine where TensorRT is not installed. How the module is made:

- the ONNX file is loaded and, when it computes in float16 (fp16 weights, casts to fp16 — e.g. a model
  converted to fp16 with fp32 input/output), an fp32 copy is made first (`widen_to_fp32`): the torch
  module then runs the same weights in float32;
- ``ScatterND`` is converted by a vectorised module (onnx2torch's own builds a Python index list on
  every call: about 2 s per YOLOv7 forward, against milliseconds here);
- on CUDA, TF32 is switched off for float32 (``allow_tf32 = False`` for matmul and cuDNN): on Ampere
  and Hopper GPUs TF32 convolutions alone make the outputs differ from a float32 reference by ~1e-3
  relative, which is the whole of the torch/ONNX Runtime difference there.

Only fp32 is supported for now; fp16 raises an `EngineError`. torch, onnx2torch (and torchvision, which
onnx2torch imports) come from the ``parity`` or ``gpu`` extra; nothing here is imported before an engine
is created.
"""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from streamer.engine.base import Engine, EngineOptions, ModelSpec
from streamer.engine.model_info import ModelInfo, inspect_model
from streamer.engine.onnxgraph import fp16_nodes, widen_to_fp32
from streamer.errors import EngineError, ModelError

log = logging.getLogger(__name__)

_INSTALL_HINT = "install the parity extra: pip install 'yolostream[parity]'"


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise EngineError(f"the torch backend needs PyTorch ({exc}); {_INSTALL_HINT}") from exc
    return torch


def _import_onnx2torch() -> Any:
    """onnx2torch, with its ScatterND converter replaced by the vectorised one.

    onnx2torch imports torchvision at import time, for its NonMaxSuppression and RoiAlign converters
    only. A torchvision that is missing or built for another torch (e.g. a CUDA torchvision beside a
    CPU-only torch: "operator torchvision::nms does not exist") would make the whole converter
    unusable, so in that case a placeholder torchvision is put in its place: those two ops then fail
    with a clear error if a graph has them; YOLO detection graphs have neither.
    """
    _ensure_torchvision()
    try:
        import onnx2torch
        from onnx2torch.node_converters import registry
    except ImportError as exc:
        raise EngineError(f"the torch backend needs onnx2torch ({exc}); {_INSTALL_HINT}") from exc
    _register_scatter_nd(registry)
    return onnx2torch


def _ensure_torchvision() -> None:
    if "torchvision" in sys.modules and getattr(sys.modules["torchvision"], "_yolostream_stub", False):
        return
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # ImportError, or RuntimeError/OSError from a torchvision of another build
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        log.warning(
            "torchvision cannot be imported (%s); onnx2torch will run without it "
            "(only ONNX NonMaxSuppression and RoiAlign need it)",
            reason,
        )
        stub = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")

        def unavailable(*_args: object, **_kwargs: object) -> None:
            raise EngineError(f"this graph needs torchvision, which cannot be imported here ({reason})")

        ops.nms = unavailable  # type: ignore[attr-defined]
        ops.roi_align = unavailable  # type: ignore[attr-defined]
        stub.ops = ops  # type: ignore[attr-defined]
        stub._yolostream_stub = True  # type: ignore[attr-defined]
        sys.modules["torchvision"] = stub
        sys.modules["torchvision.ops"] = ops


def _register_scatter_nd(registry: Any) -> None:
    """Replace onnx2torch's ScatterND converters (every opset) with `_ScatterND` (reduction none)."""
    torch = _import_torch()
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    if getattr(registry, "_yolostream_scatter_nd", False):
        return

    class ScatterND(torch.nn.Module):  # type: ignore[name-defined]
        """ONNX ScatterND without reduction: ``out = data; out[indices] = updates``, in one indexing op."""

        def forward(self, data: Any, indices: Any, updates: Any) -> Any:
            k = indices.shape[-1]
            index = indices.reshape(-1, k).long()
            out = data.clone()
            out[tuple(index.unbind(1))] = updates.reshape(-1, *updates.shape[indices.dim() - 1 :])
            return out

    for key in [k for k in registry._CONVERTER_REGISTRY if k.operation_type == "ScatterND"]:
        original = registry._CONVERTER_REGISTRY[key]

        def convert(node: Any, graph: Any, _original: Any = original) -> Any:
            if node.attributes.get("reduction", "none") != "none":
                return _original(node, graph)  # onnx2torch's own handles (or refuses) reductions
            return OperationConverterResult(
                torch_module=ScatterND(), onnx_mapping=onnx_mapping_from_node(node)
            )

        registry._CONVERTER_REGISTRY[key] = convert
    registry._yolostream_scatter_nd = True


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model: Path, options: EngineOptions, *, info: ModelInfo | None = None) -> None:
        info = info or inspect_model(model, options)
        info.require_grid(self.name)
        info.warn_if_batch_fixed(options)
        torch = _import_torch()
        if options.precision != "fp32":
            raise EngineError(
                f"precision {options.precision!r} is not supported yet by the torch backend; use fp32"
            )
        self._torch = torch
        self._device = self._pick_device(options.device)
        if self._device.type == "cuda":
            # TF32 would round float32 convolutions and matmuls to a 10-bit mantissa on Ampere and later.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if options.threads:
            torch.set_num_threads(options.threads)
        try:
            proto = onnx.load(str(model))  # (with the weights: `inspect_model` read the graph alone)
        except Exception as exc:
            raise ModelError(f"cannot read ONNX model {model}: {exc}") from exc
        height, width = info.height, info.width
        widened = fp16_nodes(proto)
        if widened:
            log.info("%s computes in float16 (%d places): converting an fp32 copy", model.name, widened)
            proto = widen_to_fp32(proto)
        onnx2torch = _import_onnx2torch()
        try:
            module = onnx2torch.convert(proto)
        except Exception as exc:  # onnx2torch raises NotImplementedError and friends for unknown ops
            raise ModelError(f"onnx2torch cannot convert {model}: {exc}") from exc
        self._module = module.to(self._device).eval()
        max_batch = info.max_batch
        out = self._forward(np.zeros((1, 3, height, width), np.float32))  # learns the layout, warms up
        if out.ndim != 3 or out.shape[2] < 6:
            raise ModelError(
                f"{model}: output shape {out.shape} is not the YOLOv7 --grid layout "
                "[batch, boxes, 5 + classes]"
            )
        self.spec = ModelSpec(
            info.input.name, height, width, max_batch, int(out.shape[2]), int(out.shape[1]),
            fixed_batch=not info.dynamic_batch,
        )  # fmt: skip
        log.info(
            "torch %s loaded %s on %s (fp32): input %dx%d, batch <= %d, %d classes",
            torch.__version__, model.name, self._device, width, height, max_batch, self.spec.num_classes,
        )  # fmt: skip

    def _pick_device(self, device: str) -> Any:
        torch = self._torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"device {device!r} asked for, but this PyTorch sees no CUDA GPU")
        return torch.device(device)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self._device)
            y = self._module(x)
            if isinstance(y, (tuple, list)):
                y = y[0]  # the first graph output, as the onnxruntime backend takes
            return np.asarray(y.float().cpu().numpy())

    def infer(self, batch: np.ndarray) -> np.ndarray:
        try:
            return self._forward(batch)
        except Exception as exc:
            raise EngineError(f"torch inference failed: {exc}") from exc

    def close(self) -> None:
        self._module = None
        if self._device.type == "cuda":
            self._torch.cuda.empty_cache()
