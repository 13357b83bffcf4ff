"""Write an ONNX detector from a YOLOv7 checkpoint, without PyTorch and without the yolov7 code.

The checkpoint (read by `streamer.models.checkpoint`, which never runs code from the file) holds the
pickled model: ``ckpt["model"]`` (or ``ckpt["ema"]``), whose ``model`` child is an ``nn.Sequential`` of
layers. Each layer carries ``f`` (the index of its input, or a list of them; negative counts back from
the layer) and ``i`` (its own index), exactly what yolov7's ``_forward_once`` follows. This module walks
that list and emits one ONNX node group per layer, with its siblings:

- `streamer.models.yolov7_graph`: the graph under construction (names, weights, float16 storage, the
  finished model);
- `streamer.models.yolov7_layers`: what each module before the head becomes (Conv with its BatchNorm
  folded in, RepConv fused, pools, SPP*, ReOrg, Upsample, Concat, Shortcut, the activations);
- `streamer.models.yolov7_heads`: the detection heads, and yolov7's ``export.py --grid`` output
  ``[batch, N, 5 + nc]``.

A module the importer does not know is a `ModelError` naming the type and the layer.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import onnx

from streamer.errors import ModelError
from streamer.models.checkpoint import load_checkpoint
from streamer.models.records import Record, attr, children, is_record, type_name
from streamer.models.yolov7_graph import INPUT_NAME, Graph
from streamer.models.yolov7_heads import HEADS
from streamer.models.yolov7_layers import emit_layer, short_name

__all__ = ["build_model", "import_checkpoint"]

log = logging.getLogger(__name__)


def import_checkpoint(
    ckpt_path: str | Path, out_path: str | Path, *, fp16: bool = False, img: int = 640
) -> Path:
    """Convert the YOLOv7 checkpoint `ckpt_path` to an ONNX detector written to `out_path`.

    `fp16` stores the weights as float16 (see `streamer.models.yolov7_graph`); `img` is the square input
    size (a multiple of the model's largest stride). The file is written atomically (a temporary file in
    the same folder, then `os.replace`). Returns `out_path`.

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
    g = Graph(fp16=fp16, img=img)
    outputs: list[str] = []
    x = INPUT_NAME
    for index, layer in enumerate(layers):
        where = f"layer {index} ({type_name(layer)})"
        f = attr(layer, "f", -1)
        if f != -1:
            x = _inputs_of(f, outputs, where)
        try:
            x = _emit(g, layer, x, f"model.{index}", last=index == len(layers) - 1)
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


def _emit(g: Graph, layer: Any, x: Any, name: str, *, last: bool) -> str:
    """A head (the last layer only), or any other layer."""
    kind = short_name(layer)
    if kind in HEADS:
        if not last:
            raise ModelError(f"{type_name(layer)} is not the last layer")
        if not isinstance(x, list):
            x = [x]
        return HEADS[kind](g, layer, x, name)
    return emit_layer(g, layer, x, name)
