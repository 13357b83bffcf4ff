"""What each yolov7 module before the head becomes in the ONNX graph (`streamer.models.yolov7_onnx`).

======================  =====================================================================
``Conv``                Conv2d with the BatchNorm folded in (the checkpoint's own ``eps``), activation
``RepConv``             3×3 + 1×1 + identity-BN branches fused into one 3×3 conv (``fuse_repvgg_block``)
``Concat``/``Shortcut`` Concat along ``d`` / Add
``MP``/``SP``/MaxPool2d MaxPool with the record's kernel, stride, padding, dilation, ceil_mode
``SPPCSPC``/``SPP``/``SPPF``/``DownC``   their convs and pools, as the yolov7 ``forward`` wires them
``ReOrg``               four stride-2 Slices, Concat
``Upsample``            Resize, nearest, by the record's integer ``scale_factor``
======================  =====================================================================

Activations: SiLU (Sigmoid·Mul; opset 17 has no SiLU op), LeakyReLU (its ``negative_slope``), ReLU, ReLU6,
Hardswish, Sigmoid, Mish, Identity. Anything else is a `ModelError` naming the type and the layer.

The detection heads (`streamer.models.yolov7_heads`) write their output convs with `conv_params` and
`emit_conv` from here; both write into a `streamer.models.yolov7_graph.Graph`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from streamer.errors import ModelError
from streamer.models.records import attr, children, parameter, type_name
from streamer.models.yolov7_graph import Graph

__all__ = ["conv_params", "emit_conv", "emit_layer", "short_name", "submodule"]


def short_name(rec: Any) -> str:
    """The class name without its module: ``Conv`` for ``models.common.Conv``."""
    return type_name(rec).rsplit(".", 1)[-1]


def submodule(rec: Any, name: str) -> Any:
    """Child `name` of a module record; a `ModelError` when it has none."""
    child = children(rec).get(name)
    if child is None:
        raise ModelError(f"{type_name(rec)} has no submodule {name!r}")
    return child


def emit_layer(g: Graph, layer: Any, x: Any, name: str) -> str:
    """A layer of ``model.model`` other than the head; `x` is its input, or the list of them (``f``)."""
    kind = short_name(layer)
    if kind in _MULTI_INPUT:
        return _MULTI_INPUT[kind](g, layer, x if isinstance(x, list) else [x], name)
    if isinstance(x, list):
        if len(x) != 1:
            raise ModelError(f"{type_name(layer)} takes one input, got {len(x)}")
        x = x[0]
    return _module(g, layer, x, name)


def _module(g: Graph, rec: Any, x: str, name: str) -> str:
    """One single-input module (a layer or a submodule of one)."""
    kind = short_name(rec)
    emit = _SINGLE.get(kind)
    if emit is None:
        raise ModelError(f"unsupported module type {type_name(rec)}")
    return emit(g, rec, x, name)


def _activation(g: Graph, act: Any, x: str, name: str) -> str:
    if act is None:
        return x
    kind = short_name(act)
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


def conv_params(conv: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A Conv2d record's weight and bias (None without one), as float64."""
    if short_name(conv) != "Conv2d":
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
    if short_name(bn) != "BatchNorm2d":
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


def emit_conv(
    g: Graph, conv: Any, weight: np.ndarray, bias: np.ndarray | None, x: str, name: str, *, pads: Any = None
) -> str:
    """A Conv node with `conv`'s stride, dilation, groups and padding (or `pads`), `weight` and `bias`."""
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


def _conv_block(g: Graph, rec: Any, x: str, name: str) -> str:
    """models.common.Conv: conv → bn (absent once fused) → act."""
    mods = children(rec)
    conv = submodule(rec, "conv")
    weight, bias = conv_params(conv)
    if mods.get("bn") is not None:
        weight, bias = _fold_bn(weight, bias, mods["bn"])
    y = emit_conv(g, conv, weight, bias, x, f"{name}.conv")
    return _activation(g, mods.get("act"), y, f"{name}.act")


def _plain_conv(g: Graph, rec: Any, x: str, name: str) -> str:
    weight, bias = conv_params(rec)
    return emit_conv(g, rec, weight, bias, x, name)


def _repconv(g: Graph, rec: Any, x: str, name: str) -> str:
    """RepConv: act(dense3x3(x) + 1x1(x) + bn(x)), fused into one 3x3 conv like ``fuse_repvgg_block``."""
    mods = children(rec)
    if mods.get("rbr_reparam") is not None:  # already deployed
        reparam = mods["rbr_reparam"]
        weight, bias = conv_params(reparam)
        y = emit_conv(g, reparam, weight, bias, x, f"{name}.rbr_reparam")
        return _activation(g, mods.get("act"), y, f"{name}.act")
    dense, one = submodule(rec, "rbr_dense"), submodule(rec, "rbr_1x1")
    conv3, bn3 = submodule(dense, "0"), submodule(dense, "1")
    conv1, bn1 = submodule(one, "0"), submodule(one, "1")
    w3, b3 = _fold_bn(*conv_params(conv3), bn3)
    w1, b1 = _fold_bn(*conv_params(conv1), bn1)
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
    y = emit_conv(g, conv3, weight, bias, x, f"{name}.rbr_reparam")
    return _activation(g, mods.get("act"), y, f"{name}.act")


def _maxpool(g: Graph, rec: Any, x: str, name: str) -> str:
    if short_name(rec) != "MaxPool2d":
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


def _wrapped_pool(g: Graph, rec: Any, x: str, name: str) -> str:
    """models.common.MP / SP: a MaxPool2d in ``m``."""
    return _maxpool(g, submodule(rec, "m"), x, f"{name}.m")


def _upsample(g: Graph, rec: Any, x: str, name: str) -> str:
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


def _reorg(g: Graph, rec: Any, x: str, name: str) -> str:
    """ReOrg: cat(x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2])."""
    axes, steps = g.ints(f"{name}.axes", [2, 3]), g.ints(f"{name}.steps", [2, 2])
    ends = g.ints(f"{name}.ends", [2**62, 2**62])
    parts = []
    for h0, w0 in ((0, 0), (1, 0), (0, 1), (1, 1)):
        starts = g.ints(f"{name}.starts{h0}{w0}", [h0, w0])
        parts.append(g.op("Slice", [x, starts, ends, axes, steps], name))
    return g.op("Concat", parts, name, axis=1)


def _sppcspc(g: Graph, rec: Any, x: str, name: str) -> str:
    def cv(i: int, inp: str) -> str:
        return _conv_block(g, submodule(rec, f"cv{i}"), inp, f"{name}.cv{i}")

    x1 = cv(4, cv(3, cv(1, x)))
    pools = [_maxpool(g, p, x1, f"{name}.m.{j}") for j, p in children(submodule(rec, "m")).items()]
    y1 = cv(6, cv(5, g.op("Concat", [x1, *pools], name, axis=1)))
    y2 = cv(2, x)
    return cv(7, g.op("Concat", [y1, y2], name, axis=1))


def _spp(g: Graph, rec: Any, x: str, name: str) -> str:
    x = _conv_block(g, submodule(rec, "cv1"), x, f"{name}.cv1")
    pools = [_maxpool(g, p, x, f"{name}.m.{j}") for j, p in children(submodule(rec, "m")).items()]
    return _conv_block(g, submodule(rec, "cv2"), g.op("Concat", [x, *pools], name, axis=1), f"{name}.cv2")


def _sppf(g: Graph, rec: Any, x: str, name: str) -> str:
    x = _conv_block(g, submodule(rec, "cv1"), x, f"{name}.cv1")
    pool = submodule(rec, "m")
    y1 = _maxpool(g, pool, x, f"{name}.m")
    y2 = _maxpool(g, pool, y1, f"{name}.m")
    y3 = _maxpool(g, pool, y2, f"{name}.m")
    return _conv_block(g, submodule(rec, "cv2"), g.op("Concat", [x, y1, y2, y3], name, axis=1), f"{name}.cv2")


def _downc(g: Graph, rec: Any, x: str, name: str) -> str:
    """DownC: cat(cv2(cv1(x)), cv3(mp(x)))."""
    a = _conv_block(g, submodule(rec, "cv1"), x, f"{name}.cv1")
    a = _conv_block(g, submodule(rec, "cv2"), a, f"{name}.cv2")
    b = _maxpool(g, submodule(rec, "mp"), x, f"{name}.mp")
    b = _conv_block(g, submodule(rec, "cv3"), b, f"{name}.cv3")
    return g.op("Concat", [a, b], name, axis=1)


def _concat(g: Graph, rec: Any, xs: list[str], name: str) -> str:
    return g.op("Concat", xs, name, axis=int(attr(rec, "d", 1)))


def _shortcut(g: Graph, rec: Any, xs: list[str], name: str) -> str:
    if len(xs) != 2:
        raise ModelError(f"Shortcut takes two inputs, got {len(xs)}")
    return g.op("Add", xs, name)


_SINGLE: dict[str, Callable[[Graph, Any, str, str], str]] = {
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
_MULTI_INPUT: dict[str, Callable[[Graph, Any, list[str], str], str]] = {
    "Concat": _concat,
    "Shortcut": _shortcut,
}
