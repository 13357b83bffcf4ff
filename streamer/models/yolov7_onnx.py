"""Write an ONNX detector from a YOLOv7 checkpoint, without PyTorch and without the yolov7 code.

The checkpoint (read by `streamer.models.checkpoint`, which never runs code from the file) holds the
pickled model: ``ckpt["model"]`` (or ``ckpt["ema"]``), whose ``model`` child is an ``nn.Sequential`` of
layers. Each layer carries ``f`` (the index of its input, or a list of them; negative counts back from
the layer) and ``i`` (its own index), exactly what yolov7's ``_forward_once`` follows. This module walks
that list and emits one ONNX node group per layer:

======================  =====================================================================
``Conv``                Conv2d with the BatchNorm folded in (the checkpoint's own ``eps``), activation
``RepConv``             3×3 + 1×1 + identity-BN branches fused into one 3×3 conv (``fuse_repvgg_block``)
``Concat``/``Shortcut`` Concat along ``d`` / Add
``MP``/``SP``/MaxPool2d MaxPool with the record's kernel, stride, padding, dilation, ceil_mode
``SPPCSPC``/``SPP``/``SPPF``/``DownC``   their convs and pools, as the yolov7 ``forward`` wires them
``ReOrg``               four stride-2 Slices, Concat
``Upsample``            Resize, nearest, by the record's integer ``scale_factor``
heads                   ``Detect``, ``IDetect``, ``IAuxDetect`` (its first ``nl`` inputs), ``ISegment``
                        (box branch only: mask coefficients and the proto branch are dropped)
======================  =====================================================================

Activations: SiLU (Sigmoid·Mul; opset 17 has no SiLU op), LeakyReLU (its ``negative_slope``), ReLU, ReLU6,
Hardswish, Sigmoid, Mish, Identity. Anything else is a `ModelError` naming the type and the layer.

Implicit knowledge (YOLOR) in the heads is folded into the 1×1 output convs as yolov7's
``IDetect.fuse`` does: ``ImplicitA`` (added before the conv) into the bias, ``ImplicitM`` (multiplied
after) into weight and bias. ``ImplicitM`` is applied only where the checkpoint's own ``forward`` applies
it: heads of the main yolov7 code register ``anchor_grid`` as a buffer and multiply; the u7 segmentation
branch's ``IDetect.forward`` (the one ``ISegment`` calls) keeps ``anchor_grid`` as a plain list and never
uses ``im`` (its ImplicitM even has the wrong channel count for the segmentation head).

The output is yolov7's ``export.py --grid`` layout, float32 ``[batch, N, 5 + nc]``: per detection layer,
``sigmoid(conv)`` as ``[B, na, ny, nx, no]``, ``xy = (2·s − 0.5 + grid)·stride``, ``wh = (2·s)²·anchor``,
then all layers concatenated (N = 25200 for three layers at 640×640). The grids are constants computed for
the fixed input size `img` (the graph's H and W are static; the batch is dynamic).

Weights are float32 by default. ``fp16=True`` stores every weight as float16 (half the file) and casts it
back to float32 in the graph (a Cast on each initializer, folded by ONNX Runtime and TensorRT at load
time): compute, input and output stay float32; only the weights are rounded. Build a TensorRT engine with
its fp16 flag for fp16 compute.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from streamer.errors import ModelError
from streamer.models.checkpoint import load_checkpoint
from streamer.models.records import Record, attr, children, is_record, parameter, type_name

__all__ = ["OPSET", "build_model", "import_checkpoint"]

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAME = "output"
_FP16_MAX = float(np.finfo(np.float16).max)


def import_checkpoint(
    ckpt_path: str | Path, out_path: str | Path, *, fp16: bool = False, img: int = 640
) -> Path:
    """Convert the YOLOv7 checkpoint `ckpt_path` to an ONNX detector written to `out_path`.

    `fp16` stores the weights as float16 (see the module docstring); `img` is the square input size
    (a multiple of the model's largest stride). The file is written atomically (a temporary file in the
    same folder, then `os.replace`). Returns `out_path`.

    Raises `ModelError` (`CheckpointError` for the file itself) when the checkpoint cannot be read or
    holds a module this importer does not know.
    """
    ckpt_path, out_path = Path(ckpt_path), Path(out_path)
    model = build_model(load_checkpoint(ckpt_path), fp16=fp16, img=img, source=ckpt_path.name)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    precision = "fp16" if fp16 else "fp32"
    log.info("wrote %s (%s weights, input %dx%d) from %s", out_path, precision, img, img, ckpt_path)
    return out_path


def build_model(ckpt: Any, *, fp16: bool = False, img: int = 640, source: str = "") -> onnx.ModelProto:
    """The ONNX model for a loaded checkpoint (`load_checkpoint`'s tree, or the model record itself)."""
    model = _model_record(ckpt)
    layers = list(children(children(model).get("model")).values())
    if not layers:
        raise ModelError("the checkpoint's model has no layers (expected model.model, an nn.Sequential)")
    if not isinstance(img, int) or img <= 0:
        raise ModelError(f"img must be a positive integer, got {img!r}")
    g = _Graph(fp16=fp16, img=img)
    outputs: list[str] = []
    x = INPUT_NAME
    for index, layer in enumerate(layers):
        where = f"layer {index} ({type_name(layer)})"
        f = attr(layer, "f", -1)
        if f != -1:
            x = _inputs_of(f, outputs, where)
        try:
            x = _emit_layer(g, layer, x, f"model.{index}", last=index == len(layers) - 1)
        except ModelError as exc:
            raise ModelError(f"{where}: {exc}") from None
        outputs.append(x)
    if not g.has_head:
        raise ModelError(f"the last layer is {type_name(layers[-1])}, not a detection head")
    return g.finish(x, names=_class_names(model), source=source)


def _model_record(ckpt: Any) -> Record:
    if isinstance(ckpt, dict):
        for key in ("ema", "model"):  # a training checkpoint's EMA weights are the ones to use
            if is_record(ckpt.get(key)):
                return ckpt[key]
        raise ModelError(f"no model in the checkpoint (keys: {sorted(map(str, ckpt))})")
    if is_record(ckpt):
        return ckpt
    raise ModelError(f"the checkpoint holds a {type_name(ckpt)}, not a pickled yolov7 model")


def _inputs_of(f: Any, outputs: list[str], where: str) -> Any:
    def one(j: Any) -> str:
        if not isinstance(j, int) or not -len(outputs) <= j < len(outputs):
            raise ModelError(f"{where}: input index {j!r} out of range (layer has {len(outputs)} before it)")
        return outputs[j]

    if isinstance(f, int):
        return one(f)
    if isinstance(f, (list, tuple)):
        return [outputs[-1] if j == -1 else one(j) for j in f]
    raise ModelError(f"{where}: bad 'f' (inputs) {f!r}")


def _class_names(model: Record) -> list[str]:
    names = attr(model, "names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else []


# --- the graph under construction -----------------------------------------------------------------------


class _Graph:
    def __init__(self, *, fp16: bool, img: int) -> None:
        self.fp16 = fp16
        self.img = img
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.has_head = False
        self.nc = 0
        self.boxes = 0
        self.strides: list[float] = []
        self._taken: set[str] = {INPUT_NAME}

    def name(self, base: str) -> str:
        name, n = base, 1
        while name in self._taken:
            name, n = f"{base}_{n}", n + 1
        self._taken.add(name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        out = self.name(f"{name}/{op_type}")
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def ops(self, op_type: str, inputs: Sequence[str], name: str, n: int, **attrs: Any) -> list[str]:
        base = self.name(f"{name}/{op_type}")
        outs = [f"{base}_out{k}" for k in range(n)]
        self._taken.update(outs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=base, **attrs))
        return outs

    def weight(self, name: str, value: np.ndarray) -> str:
        """A float weight: float32, or float16 plus a Cast back to float32 when `fp16`."""
        value = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(value)):
            raise ModelError(f"{name} has NaN or infinite values")
        if not self.fp16:
            return self.const(name, value.astype(np.float32))
        if np.abs(value).max(initial=0.0) > _FP16_MAX:
            raise ModelError(f"{name} has values beyond float16's range; import without fp16")
        half = self.const(f"{name}.fp16", value.astype(np.float16))
        return self.op("Cast", [half], name, to=TensorProto.FLOAT)

    def const(self, name: str, value: np.ndarray) -> str:
        name = self.name(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def finish(self, output: str, *, names: list[str], source: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [output], [OUTPUT_NAME], name="output"))
        graph = helper.make_graph(
            self.nodes,
            "yolov7",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, self.img, self.img])],
            [
                helper.make_tensor_value_info(
                    OUTPUT_NAME, TensorProto.FLOAT, ["batch", self.boxes, 5 + self.nc]
                )
            ],
            self.inits,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="yolostream"
        )
        model.ir_version = 8  # opset 17; readable by onnxruntime >= 1.14 and TensorRT 8.6
        meta = {"names": json.dumps(names), "stride": json.dumps(self.strides), "source": source}
        helper.set_model_props(model, {k: v for k, v in meta.items() if v})
        onnx.checker.check_model(model)
        return model


# --- layers ---------------------------------------------------------------------------------------------


def _short(rec: Any) -> str:
    return type_name(rec).rsplit(".", 1)[-1]


def _child(rec: Any, name: str) -> Any:
    child = children(rec).get(name)
    if child is None:
        raise ModelError(f"{type_name(rec)} has no submodule {name!r}")
    return child


def _emit_layer(g: _Graph, layer: Any, x: Any, name: str, *, last: bool) -> str:
    kind = _short(layer)
    if kind in _HEADS:
        if not last:
            raise ModelError(f"{type_name(layer)} is not the last layer")
        if not isinstance(x, list):
            x = [x]
        return _HEADS[kind](g, layer, x, name)
    if kind in _MULTI_INPUT:
        return _MULTI_INPUT[kind](g, layer, x if isinstance(x, list) else [x], name)
    if isinstance(x, list):
        if len(x) != 1:
            raise ModelError(f"{type_name(layer)} takes one input, got {len(x)}")
        x = x[0]
    return _module(g, layer, x, name)


def _module(g: _Graph, rec: Any, x: str, name: str) -> str:
    """One single-input module (a layer or a submodule of one)."""
    kind = _short(rec)
    emit = _SINGLE.get(kind)
    if emit is None:
        raise ModelError(f"unsupported module type {type_name(rec)}")
    return emit(g, rec, x, name)


def _activation(g: _Graph, act: Any, x: str, name: str) -> str:
    if act is None:
        return x
    kind = _short(act)
    if kind == "Identity":
        return x
    if kind in ("SiLU", "Swish", "MemoryEfficientSwish"):
        return g.op("Mul", [x, g.op("Sigmoid", [x], name)], name)
    if kind == "LeakyReLU":
        return g.op("LeakyRelu", [x], name, alpha=float(attr(act, "negative_slope", 0.01)))
    if kind == "ReLU":
        return g.op("Relu", [x], name)
    if kind == "ReLU6":
        zero = g.const(f"{name}.zero", np.float32(0.0))
        six = g.const(f"{name}.six", np.float32(6.0))
        return g.op("Clip", [x, zero, six], name)
    if kind in ("Hardswish", "Hardswish_"):
        return g.op("HardSwish", [x], name)
    if kind == "Sigmoid":
        return g.op("Sigmoid", [x], name)
    if kind in ("Mish", "MemoryEfficientMish"):
        return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x], name)], name)], name)
    raise ModelError(f"unsupported activation {type_name(act)}")


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    raise ModelError(f"unsupported {what} {value!r}")


def _conv_params(conv: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if _short(conv) != "Conv2d":
        raise ModelError(f"expected a Conv2d, got {type_name(conv)}")
    weight = parameter(conv, "weight")
    if weight is None or weight.ndim != 4:
        raise ModelError("Conv2d without a 4-d weight")
    if attr(conv, "padding_mode", "zeros") != "zeros":
        raise ModelError(f"unsupported Conv2d padding_mode {attr(conv, 'padding_mode')!r}")
    bias = parameter(conv, "bias")
    return weight.astype(np.float64), None if bias is None else bias.astype(np.float64)


def _bn_scale_shift(bn: Any) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm2d (inference) as ``y = x * scale + shift``, with the record's own ``eps``."""
    if _short(bn) != "BatchNorm2d":
        raise ModelError(f"expected a BatchNorm2d, got {type_name(bn)}")
    mean, var = parameter(bn, "running_mean"), parameter(bn, "running_var")
    if mean is None or var is None:
        raise ModelError("BatchNorm2d without running statistics (track_running_stats=False)")
    eps = attr(bn, "eps")
    if not isinstance(eps, float):
        raise ModelError(f"BatchNorm2d without a float eps ({eps!r})")
    gamma, beta = parameter(bn, "weight"), parameter(bn, "bias")
    scale = (1.0 if gamma is None else gamma.astype(np.float64)) / np.sqrt(var.astype(np.float64) + eps)
    shift = (0.0 if beta is None else beta.astype(np.float64)) - mean.astype(np.float64) * scale
    return np.broadcast_to(scale, mean.shape), np.broadcast_to(shift, mean.shape)


def _fold_bn(weight: np.ndarray, bias: np.ndarray | None, bn: Any) -> tuple[np.ndarray, np.ndarray]:
    scale, shift = _bn_scale_shift(bn)
    if scale.shape[0] != weight.shape[0]:
        raise ModelError(f"BatchNorm2d of {scale.shape[0]} channels after a conv of {weight.shape[0]}")
    b = shift if bias is None else bias * scale + shift
    return weight * scale[:, None, None, None], b


def _emit_conv(
    g: _Graph, conv: Any, weight: np.ndarray, bias: np.ndarray | None, x: str, name: str, *, pads: Any = None
) -> str:
    kh, kw = weight.shape[2:]
    sh, sw = _pair(attr(conv, "stride", 1), "stride")
    dh, dw = _pair(attr(conv, "dilation", 1), "dilation")
    if pads is None:
        padding = attr(conv, "padding", 0)
        if padding == "valid":
            padding = 0
        if padding == "same":
            raise ModelError("Conv2d padding='same' is not supported")
        ph, pw = _pair(padding, "padding")
        pads = [ph, pw, ph, pw]
    groups = attr(conv, "groups", 1)
    inputs = [x, g.weight(f"{name}.weight", weight)]
    if bias is not None:
        inputs.append(g.weight(f"{name}.bias", bias))
    return g.op(
        "Conv", inputs, name, kernel_shape=[kh, kw], strides=[sh, sw], pads=list(pads),
        dilations=[dh, dw], group=int(groups),
    )  # fmt: skip


def _conv_block(g: _Graph, rec: Any, x: str, name: str) -> str:
    """models.common.Conv: conv → bn (absent once fused) → act."""
    mods = children(rec)
    conv = _child(rec, "conv")
    weight, bias = _conv_params(conv)
    if mods.get("bn") is not None:
        weight, bias = _fold_bn(weight, bias, mods["bn"])
    y = _emit_conv(g, conv, weight, bias, x, f"{name}.conv")
    return _activation(g, mods.get("act"), y, f"{name}.act")


def _plain_conv(g: _Graph, rec: Any, x: str, name: str) -> str:
    weight, bias = _conv_params(rec)
    return _emit_conv(g, rec, weight, bias, x, name)


def _repconv(g: _Graph, rec: Any, x: str, name: str) -> str:
    """RepConv: act(dense3x3(x) + 1x1(x) + bn(x)), fused into one 3x3 conv like ``fuse_repvgg_block``."""
    mods = children(rec)
    if mods.get("rbr_reparam") is not None:  # already deployed
        reparam = mods["rbr_reparam"]
        weight, bias = _conv_params(reparam)
        y = _emit_conv(g, reparam, weight, bias, x, f"{name}.rbr_reparam")
        return _activation(g, mods.get("act"), y, f"{name}.act")
    dense, one = _child(rec, "rbr_dense"), _child(rec, "rbr_1x1")
    conv3, bn3 = _child(dense, "0"), _child(dense, "1")
    conv1, bn1 = _child(one, "0"), _child(one, "1")
    w3, b3 = _fold_bn(*_conv_params(conv3), bn3)
    w1, b1 = _fold_bn(*_conv_params(conv1), bn1)
    k = w3.shape[2]
    if w3.shape[2:] != (k, k) or k % 2 != 1 or w1.shape[2:] != (1, 1):
        raise ModelError(f"RepConv with kernels {w3.shape[2:]} and {w1.shape[2:]}")
    if _pair(attr(conv3, "padding", 0), "padding") != (k // 2, k // 2) or _pair(
        attr(conv1, "padding", 0), "padding"
    ) != (0, 0):
        raise ModelError("RepConv with non-centred padding")
    weight = w3.copy()
    weight[:, :, k // 2, k // 2] += w1[:, :, 0, 0]
    bias = b3 + b1
    identity = mods.get("rbr_identity")
    if identity is not None:
        scale, shift = _bn_scale_shift(identity)
        out_c, in_per_group = weight.shape[:2]
        if scale.shape[0] != out_c:
            raise ModelError("RepConv identity branch with a different channel count")
        weight[np.arange(out_c), np.arange(out_c) % in_per_group, k // 2, k // 2] += scale
        bias = bias + shift
    y = _emit_conv(g, conv3, weight, bias, x, f"{name}.rbr_reparam")
    return _activation(g, mods.get("act"), y, f"{name}.act")


def _maxpool(g: _Graph, rec: Any, x: str, name: str) -> str:
    if _short(rec) != "MaxPool2d":
        raise ModelError(f"expected a MaxPool2d, got {type_name(rec)}")
    if attr(rec, "return_indices", False):
        raise ModelError("MaxPool2d with return_indices")
    kernel = _pair(attr(rec, "kernel_size"), "kernel_size")
    stride_attr = attr(rec, "stride")
    stride = kernel if stride_attr in (None, (), []) else _pair(stride_attr, "stride")
    ph, pw = _pair(attr(rec, "padding", 0), "padding")
    dilation = _pair(attr(rec, "dilation", 1), "dilation")
    return g.op(
        "MaxPool", [x], name, kernel_shape=list(kernel), strides=list(stride), pads=[ph, pw, ph, pw],
        dilations=list(dilation), ceil_mode=int(bool(attr(rec, "ceil_mode", False))),
    )  # fmt: skip


def _wrapped_pool(g: _Graph, rec: Any, x: str, name: str) -> str:
    """models.common.MP / SP: a MaxPool2d in ``m``."""
    return _maxpool(g, _child(rec, "m"), x, f"{name}.m")


def _upsample(g: _Graph, rec: Any, x: str, name: str) -> str:
    mode = attr(rec, "mode", "nearest")
    if mode != "nearest":
        raise ModelError(f"Upsample mode {mode!r} (only 'nearest' is supported)")
    if attr(rec, "size") is not None:
        raise ModelError("Upsample with a fixed output size (only scale_factor is supported)")
    factor = attr(rec, "scale_factor")
    fh, fw = factor if isinstance(factor, (tuple, list)) and len(factor) == 2 else (factor, factor)
    if not all(isinstance(v, (int, float)) and float(v) == int(v) and v >= 1 for v in (fh, fw)):
        raise ModelError(f"Upsample scale_factor {factor!r} (only integer factors are supported)")
    scales = g.const(f"{name}.scales", np.asarray([1, 1, fh, fw], dtype=np.float32))
    return g.op(
        "Resize", [x, "", scales], name, mode="nearest", coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )  # fmt: skip


def _reorg(g: _Graph, rec: Any, x: str, name: str) -> str:
    """ReOrg: cat(x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])."""
    axes, steps = g.ints(f"{name}.axes", [2, 3]), g.ints(f"{name}.steps", [2, 2])
    ends = g.ints(f"{name}.ends", [2**62, 2**62])
    parts = []
    for h0, w0 in ((0, 0), (1, 0), (0, 1), (1, 1)):
        starts = g.ints(f"{name}.starts{h0}{w0}", [h0, w0])
        parts.append(g.op("Slice", [x, starts, ends, axes, steps], name))
    return g.op("Concat", parts, name, axis=1)


def _sppcspc(g: _Graph, rec: Any, x: str, name: str) -> str:
    def cv(i: int, inp: str) -> str:
        return _conv_block(g, _child(rec, f"cv{i}"), inp, f"{name}.cv{i}")

    x1 = cv(4, cv(3, cv(1, x)))
    pools = [_maxpool(g, p, x1, f"{name}.m.{j}") for j, p in children(_child(rec, "m")).items()]
    y1 = cv(6, cv(5, g.op("Concat", [x1, *pools], name, axis=1)))
    y2 = cv(2, x)
    return cv(7, g.op("Concat", [y1, y2], name, axis=1))


def _spp(g: _Graph, rec: Any, x: str, name: str) -> str:
    x = _conv_block(g, _child(rec, "cv1"), x, f"{name}.cv1")
    pools = [_maxpool(g, p, x, f"{name}.m.{j}") for j, p in children(_child(rec, "m")).items()]
    return _conv_block(g, _child(rec, "cv2"), g.op("Concat", [x, *pools], name, axis=1), f"{name}.cv2")


def _sppf(g: _Graph, rec: Any, x: str, name: str) -> str:
    x = _conv_block(g, _child(rec, "cv1"), x, f"{name}.cv1")
    pool = _child(rec, "m")
    y1 = _maxpool(g, pool, x, f"{name}.m")
    y2 = _maxpool(g, pool, y1, f"{name}.m")
    y3 = _maxpool(g, pool, y2, f"{name}.m")
    return _conv_block(g, _child(rec, "cv2"), g.op("Concat", [x, y1, y2, y3], name, axis=1), f"{name}.cv2")


def _downc(g: _Graph, rec: Any, x: str, name: str) -> str:
    """DownC: cat(cv2(cv1(x)), cv3(mp(x)))."""
    a = _conv_block(g, _child(rec, "cv1"), x, f"{name}.cv1")
    a = _conv_block(g, _child(rec, "cv2"), a, f"{name}.cv2")
    b = _conv_block(g, _child(rec, "cv3"), _maxpool(g, _child(rec, "mp"), x, f"{name}.mp"), f"{name}.cv3")
    return g.op("Concat", [a, b], name, axis=1)


def _concat(g: _Graph, rec: Any, xs: list[str], name: str) -> str:
    return g.op("Concat", xs, name, axis=int(attr(rec, "d", 1)))


def _shortcut(g: _Graph, rec: Any, xs: list[str], name: str) -> str:
    if len(xs) != 2:
        raise ModelError(f"Shortcut takes two inputs, got {len(xs)}")
    return g.op("Add", xs, name)


_SINGLE: dict[str, Callable[[_Graph, Any, str, str], str]] = {
    "Conv": _conv_block,
    "RepConv": _repconv,
    "Conv2d": _plain_conv,
    "MP": _wrapped_pool,
    "SP": _wrapped_pool,
    "MaxPool2d": _maxpool,
    "Upsample": _upsample,
    "ReOrg": _reorg,
    "SPPCSPC": _sppcspc,
    "SPP": _spp,
    "SPPF": _sppf,
    "DownC": _downc,
    "Identity": lambda g, rec, x, name: x,
}
_MULTI_INPUT: dict[str, Callable[[_Graph, Any, list[str], str], str]] = {
    "Concat": _concat,
    "Shortcut": _shortcut,
}


# --- detection heads ------------------------------------------------------------------------------------


def _head(g: _Graph, rec: Any, xs: list[str], name: str) -> str:
    """Detect / IDetect / IAuxDetect / ISegment → ``[B, N, 5 + nc]`` in the ``--grid`` layout."""
    kind = _short(rec)
    nc, na, nl = attr(rec, "nc"), attr(rec, "na"), attr(rec, "nl")
    if not all(isinstance(v, int) and v > 0 for v in (nc, na, nl)):
        raise ModelError(f"{type_name(rec)} without nc/na/nl ({nc!r}, {na!r}, {nl!r})")
    no = attr(rec, "no", nc + 5)  # outputs per anchor of the conv: 5 + nc (+ nm mask coefficients)
    keep = nc + 5  # what the box branch uses
    if kind == "IAuxDetect":
        xs = xs[:nl]  # the auxiliary inputs (and the m2 convs) only matter in training
    if len(xs) != nl:
        raise ModelError(f"{type_name(rec)} has {len(xs)} inputs for {nl} detection layers")
    anchors, stride = parameter(rec, "anchors"), attr(rec, "stride")
    if anchors is None or anchors.shape != (nl, na, 2):
        got = None if anchors is None else anchors.shape
        raise ModelError(f"{type_name(rec)} anchors of shape {got}, expected ({nl}, {na}, 2)")
    if not isinstance(stride, np.ndarray) or stride.shape != (nl,):
        raise ModelError(f"{type_name(rec)} without per-layer strides")
    stride = stride.astype(np.float64)
    buffered_grid = parameter(rec, "anchor_grid")  # main yolov7 code: a buffer in pixels, and `im` is used
    if buffered_grid is not None:
        anchor_px = buffered_grid.astype(np.float64).reshape(nl, na, 2)
    else:  # yolov5/u7 code: anchors (in strides) × stride, computed at run time
        anchor_px = anchors.astype(np.float64) * stride[:, None, None]
    mods = children(rec)
    convs, ia, im = children(_child(rec, "m")), children(mods.get("ia")), children(mods.get("im"))
    use_im = buffered_grid is not None and bool(im)
    g.has_head, g.nc, g.strides = True, nc, [float(s) for s in stride]
    levels = []
    for i, x in enumerate(xs):
        lname = f"{name}.m.{i}"
        conv = convs.get(str(i))
        if conv is None:
            raise ModelError(f"{type_name(rec)} has no output conv m.{i}")
        weight, bias = _conv_params(conv)
        if weight.shape[0] != na * no or weight.shape[2:] != (1, 1):
            raise ModelError(f"{type_name(rec)} conv m.{i} has weight {weight.shape}, expected {na * no} 1x1")
        if bias is None:
            bias = np.zeros(weight.shape[0])
        if str(i) in ia:  # ImplicitA: conv(x + a) = conv(x) + W·a
            a = parameter(ia[str(i)], "implicit")
            if a is None or a.size != weight.shape[1]:
                raise ModelError(f"{type_name(rec)} ia.{i} does not match conv m.{i}")
            bias = bias + weight[:, :, 0, 0] @ a.astype(np.float64).reshape(-1)
        if use_im and str(i) in im:  # ImplicitM: conv(x) * m
            m = parameter(im[str(i)], "implicit")
            if m is None or m.size != weight.shape[0]:
                raise ModelError(f"{type_name(rec)} im.{i} does not match conv m.{i}")
            m = m.astype(np.float64).reshape(-1)
            weight, bias = weight * m[:, None, None, None], bias * m
        # keep only the box branch: per anchor, the first 5 + nc of `no` outputs
        rows = (np.arange(na)[:, None] * no + np.arange(keep)[None, :]).reshape(-1)
        y = _emit_conv(g, conv, weight[rows], bias[rows], x, lname, pads=[0, 0, 0, 0])
        levels.append(_decode(g, y, i, na, keep, float(stride[i]), anchor_px[i], f"{name}.decode{i}"))
    return g.op("Concat", levels, name, axis=1)


def _decode(
    g: _Graph, y: str, i: int, na: int, no: int, stride: float, anchors: np.ndarray, name: str
) -> str:
    """``[B, na*no, ny, nx]`` → ``[B, na*ny*nx, no]``: sigmoid, then xy and wh in input pixels.

    yolov7 assigns into slices of the sigmoid in place (``y[..., 0:2] = ...``), which torch's ONNX export
    turns into ScatterND; here xy, wh and the rest are split apart, computed and concatenated instead.
    """
    if g.img % stride:
        raise ModelError(f"input size {g.img} is not a multiple of the detection stride {stride:g}")
    ny = nx = int(g.img // stride)
    g.boxes += na * ny * nx
    shape5 = g.ints(f"{name}.shape5", [-1, na, no, ny, nx])
    t = g.op("Transpose", [g.op("Reshape", [y, shape5], name)], name, perm=[0, 1, 3, 4, 2])
    s = g.op("Sigmoid", [t], name)
    xy, wh, rest = g.ops("Split", [s, g.ints(f"{name}.split", [2, 2, no - 4])], name, 3, axis=4)
    yv, xv = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij")
    grid = (np.stack((xv, yv), -1) - np.float32(0.5)).reshape(1, 1, ny, nx, 2)  # yolov7: 2s - 0.5 + grid
    two = g.const(f"{name}.two", np.float32(2.0))
    xy = g.op("Mul", [xy, two], name)
    xy = g.op("Add", [xy, g.const(f"{name}.grid", grid.astype(np.float32))], name)
    xy = g.op("Mul", [xy, g.const(f"{name}.stride", np.float32(stride))], name)
    wh = g.op("Mul", [wh, two], name)
    wh = g.op("Mul", [wh, wh], name)
    anchor_grid = anchors.astype(np.float32).reshape(1, na, 1, 1, 2)
    wh = g.op("Mul", [wh, g.const(f"{name}.anchor_grid", anchor_grid)], name)
    out = g.op("Concat", [xy, wh, rest], name, axis=4)
    return g.op("Reshape", [out, g.ints(f"{name}.shape3", [-1, na * ny * nx, no])], name)


_HEADS: dict[str, Callable[[_Graph, Any, list[str], str], str]] = {
    "Detect": _head,
    "IDetect": _head,
    "IAuxDetect": _head,
    "ISegment": _head,
}
