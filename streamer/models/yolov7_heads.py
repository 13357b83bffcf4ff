"""The detection heads of a YOLOv7 checkpoint in the ONNX graph (`streamer.models.yolov7_onnx`).

``Detect``, ``IDetect``, ``IAuxDetect`` (its first ``nl`` inputs) and ``ISegment`` (box branch only: mask
coefficients and the proto branch are dropped); the layers before them are in
`streamer.models.yolov7_layers`.

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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from streamer.errors import ModelError
from streamer.models.records import attr, children, parameter, type_name
from streamer.models.yolov7_graph import Graph
from streamer.models.yolov7_layers import conv_params, emit_conv, short_name, submodule

__all__ = ["HEADS"]


def _head(g: Graph, rec: Any, xs: list[str], name: str) -> str:
    """Detect / IDetect / IAuxDetect / ISegment → ``[B, N, 5 + nc]`` in the ``--grid`` layout."""
    kind = short_name(rec)
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
    convs, ia, im = children(submodule(rec, "m")), children(mods.get("ia")), children(mods.get("im"))
    use_im = buffered_grid is not None and bool(im)
    g.has_head, g.nc, g.strides = True, nc, [float(s) for s in stride]
    levels = []
    for i, x in enumerate(xs):
        lname = f"{name}.m.{i}"
        conv = convs.get(str(i))
        if conv is None:
            raise ModelError(f"{type_name(rec)} has no output conv m.{i}")
        weight, bias = conv_params(conv)
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
        y = emit_conv(g, conv, weight[rows], bias[rows], x, lname, pads=[0, 0, 0, 0])
        levels.append(_decode(g, y, i, na, keep, float(stride[i]), anchor_px[i], f"{name}.decode{i}"))
    return g.op("Concat", levels, name, axis=1)


def _decode(g: Graph, y: str, i: int, na: int, no: int, stride: float, anchors: np.ndarray, name: str) -> str:
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


HEADS: dict[str, Callable[[Graph, Any, list[str], str], str]] = {
    "Detect": _head,
    "IDetect": _head,
    "IAuxDetect": _head,
    "ISegment": _head,
}
