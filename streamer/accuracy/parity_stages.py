"""The stages `yolostream parity --stages` checks one by one: preprocessing, then the model's layers.

Preprocessing: every backend of a parity run turns a frame into its input tensor with a named
implementation (`PREPROCESSORS`): ``reference`` is the daemon's CPU letterbox (yolov7's, exactly); the
others reproduce the defects of known hand-written pipelines — padding with 128 instead of 114, the image
put at the top-left instead of centred, BGR instead of RGB — so that the check itself can be checked;
``cuda`` is the daemon's letterbox of NVDEC frames: the image converted to NV12 and letterboxed by the
CUDA kernel's arithmetic (its NumPy model here, the kernel itself where the engine runs on the GPU).
`compare_inputs` says how two input tensors differ and names the cause.

Layers: for two ONNX models run by ONNX Runtime, `first_divergence` marks node outputs as extra graph
outputs (in copies of the models), runs both on the same input, and returns the first node, in
topological order, whose output differs beyond a relative tolerance — with, for a Conv, how its weights
differ (a per-output-channel scale is what a wrong BatchNorm eps leaves in a fused graph).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import numpy_helper

from streamer.engine.onnxgraph import expose_outputs, node_outputs
from streamer.preprocess import LetterboxGeometry, letterbox, letterbox_geometry, to_input_tensor

log = logging.getLogger(__name__)

Preprocessor = Callable[[np.ndarray, int, int, bool], tuple[np.ndarray, LetterboxGeometry]]
"""``(rgb frame, input width, input height, swap_rb) → (3xHxW float32 tensor, geometry)``."""


def _reference(rgb: np.ndarray, w: int, h: int, swap_rb: bool) -> tuple[np.ndarray, LetterboxGeometry]:
    boxed, geometry = letterbox(rgb, w, h)
    return to_input_tensor(boxed, swap_rb=swap_rb), geometry


def _pad128(rgb: np.ndarray, w: int, h: int, swap_rb: bool) -> tuple[np.ndarray, LetterboxGeometry]:
    boxed, g = letterbox(rgb, w, h)
    inner = boxed[g.top : g.top + g.new_h, g.left : g.left + g.new_w].copy()
    boxed[...] = 128
    boxed[g.top : g.top + g.new_h, g.left : g.left + g.new_w] = inner
    return to_input_tensor(boxed, swap_rb=swap_rb), g


def _topleft(rgb: np.ndarray, w: int, h: int, swap_rb: bool) -> tuple[np.ndarray, LetterboxGeometry]:
    g = letterbox_geometry(rgb.shape[1], rgb.shape[0], w, h)
    g = LetterboxGeometry(g.src_w, g.src_h, g.dst_w, g.dst_h, g.new_w, g.new_h, 0, 0, g.ratio)
    boxed = np.full((h, w, 3), 114, np.uint8)
    boxed[: g.new_h, : g.new_w] = cv2.resize(rgb, (g.new_w, g.new_h), interpolation=cv2.INTER_LINEAR)
    return to_input_tensor(boxed, swap_rb=swap_rb), g  # boxes mapped back with its own geometry


def _swapped(rgb: np.ndarray, w: int, h: int, swap_rb: bool) -> tuple[np.ndarray, LetterboxGeometry]:
    return _reference(rgb, w, h, not swap_rb)


def _cuda(rgb: np.ndarray, w: int, h: int, swap_rb: bool) -> tuple[np.ndarray, LetterboxGeometry]:
    """The image as NV12 (BT.601 limited), letterboxed by the kernel's NumPy model (bit-exact with it)."""
    from streamer.accuracy.eval_pipeline import rgb_to_nv12
    from streamer.preprocess.nv12 import YuvCoefficients, letterbox_nv12

    y, uv, _ = rgb_to_nv12(rgb)
    coefficients = YuvCoefficients.for_stream("bt601", full_range=False)
    return letterbox_nv12(y, uv, rgb.shape[1], rgb.shape[0], w, h, coefficients, swap_rb=swap_rb)


PREPROCESSORS: dict[str, Preprocessor] = {
    "reference": _reference,
    "pad128": _pad128,
    "topleft": _topleft,
    "swaprb": _swapped,
    "cuda": _cuda,
}
"""Preprocessing implementations by name: the daemon's reference, emulations of known defects, and the
daemon's NVDEC-path letterbox (``cuda``: on a GPU engine the CUDA kernel itself runs)."""


# ----------------------------------------------------------------------------------------- preprocessing


@dataclass
class InputDiff:
    """How the input tensors of two preprocessing implementations differ, over all frames."""

    frames: int = 0
    max_levels: float = 0.0
    """Largest difference in 0..255 levels."""
    differing: int = 0
    values: int = 0
    causes: dict[str, int] = field(default_factory=dict)
    """Diagnosed cause → number of frames."""

    @property
    def differing_fraction(self) -> float:
        return self.differing / self.values if self.values else 0.0

    def passes(self, max_levels: float, max_fraction: float) -> bool:
        return self.max_levels <= max_levels and self.differing_fraction <= max_fraction

    def add(self, a: np.ndarray, b: np.ndarray, geometry: LetterboxGeometry) -> None:
        diff = np.abs(a - b) * 255.0
        self.frames += 1
        self.values += diff.size
        self.differing += int(np.count_nonzero(diff > 0.5))
        self.max_levels = max(self.max_levels, float(diff.max(initial=0)))
        cause = diagnose_input(a, b, geometry)
        if cause:
            self.causes[cause] = self.causes.get(cause, 0) + 1


def diagnose_input(a: np.ndarray, b: np.ndarray, g: LetterboxGeometry) -> str | None:
    """Name what differs between the reference input `a` and a candidate `b` (3xHxW, 0..1), if anything.

    Looks, in order, for: identical tensors (None); swapped colour channels; the picture placed
    elsewhere (found by matching the reference's picture area inside the candidate); a different padding
    value (picture area equal, padding not); otherwise differences inside the picture (resize method or
    rounding), with their size.
    """
    if np.array_equal(a, b):
        return None
    if np.allclose(a, b[::-1], atol=1.5 / 255):
        return "colour order: the candidate's channels are swapped (RGB vs BGR)"
    inner = (slice(None), slice(g.top, g.top + g.new_h), slice(g.left, g.left + g.new_w))
    pad = np.ones(a.shape[1:], bool)
    pad[inner[1], inner[2]] = False
    inner_same = np.abs(a[inner] - b[inner]).max() * 255 <= 1.5
    if not inner_same:
        offset = _find_offset(a[inner], b)
        if offset is not None and offset != (g.left, g.top):
            return (
                f"placement: the picture is at x={offset[0]}, y={offset[1]} in the candidate, "
                f"at x={g.left}, y={g.top} in the reference (centred, yolov7)"
            )
        levels = np.abs(a[inner] - b[inner]).max() * 255
        return (
            f"resize: pixels inside the picture differ by up to {levels:.0f} levels (interpolation/rounding)"
        )
    if pad.any():
        ref_pad = np.round(np.median(a[:, pad], axis=1) * 255).astype(int).tolist()
        cand_pad = np.round(np.median(b[:, pad], axis=1) * 255).astype(int).tolist()
        if ref_pad != cand_pad:
            return (
                f"padding value: the candidate pads with {cand_pad}, "
                f"the reference with {ref_pad} (yolov7: 114)"
            )
    return "padding: the padded area differs"


def _find_offset(picture: np.ndarray, candidate: np.ndarray) -> tuple[int, int] | None:
    """Where `picture` (3xhxw) best matches inside `candidate` (3xHxW), if it matches well."""
    ph, pw = picture.shape[1:]
    ch, cw = candidate.shape[1:]
    if ph > ch or pw > cw or ph < 8 or pw < 8:
        return None
    tpl = np.ascontiguousarray(picture.transpose(1, 2, 0)).astype(np.float32)
    img = np.ascontiguousarray(candidate.transpose(1, 2, 0)).astype(np.float32)
    scores = cv2.matchTemplate(img, tpl, cv2.TM_SQDIFF)
    _, _, (x, y), _ = cv2.minMaxLoc(scores)
    if np.abs(candidate[:, y : y + ph, x : x + pw] - picture).max() * 255 > 1.5:
        return None
    return int(x), int(y)


# ------------------------------------------------------------------------------------------------ layers

LAYER_OPS = (
    "Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid",
    "HardSigmoid", "HardSwish", "Mish", "Mul", "Add", "Concat", "MaxPool", "Resize",
)  # fmt: skip
"""Node types whose outputs are compared by default (convolutions, activations and the joins)."""


@dataclass
class LayerDiff:
    """One compared tensor."""

    node: str
    op: str
    tensor: str
    max_abs: float
    scale: float
    """max |reference| (the error is relative to it)."""
    cosine: float

    @property
    def relative(self) -> float:
        return self.max_abs / self.scale if self.scale > 0 else (0.0 if self.max_abs == 0 else np.inf)


@dataclass
class LayerReport:
    """The outcome of `first_divergence`."""

    compared: list[LayerDiff]
    """Every compared tensor up to and including the first divergent one, in topological order."""
    first: LayerDiff | None
    """The first tensor beyond tolerance (None: all within)."""
    tolerance: float
    weights: str | None = None
    """How the first node's weights differ between the models, when they do."""
    skipped: str | None = None
    """Why the stage could not run, when it could not."""


def _session(model: onnx.ModelProto) -> object:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def first_divergence(
    model_a: Path,
    model_b: Path,
    batch: np.ndarray,
    *,
    tolerance: float = 1e-3,
    op_types: Sequence[str] = LAYER_OPS,
    chunk: int = 48,
) -> LayerReport:
    """Find the first node whose output differs between `model_a` and `model_b` on `batch`.

    Tensors are matched by name (a copy of a model, or a re-export that kept the names); only tensors
    present in both graphs are compared. They are exposed `chunk` at a time, in topological order of
    `model_a`, and the search stops at the first chunk with a divergence: the relative error
    ``max |a - b| / max |a|`` above `tolerance`.
    """
    a = onnx.load(str(model_a))
    b = onnx.load(str(model_b))
    rows_b = {t for _, _, t in node_outputs(b)}
    rows = [r for r in node_outputs(a, op_types) if r[2] in rows_b]
    if not rows:
        return LayerReport([], None, tolerance, skipped="the two graphs share no tensor names to compare")
    input_a, input_b = a.graph.input[0].name, b.graph.input[0].name
    compared: list[LayerDiff] = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        names = [t for _, _, t in part]
        outs_a = _run_exposed(a, names, input_a, batch)
        outs_b = _run_exposed(b, names, input_b, batch)
        for node, op, tensor in part:
            x = np.asarray(outs_a[tensor], dtype=np.float64)
            y = np.asarray(outs_b[tensor], dtype=np.float64)
            if x.shape != y.shape:
                diff = LayerDiff(node, op, tensor, np.inf, 0.0, 0.0)
            else:
                d = np.abs(x - y)
                norm = np.linalg.norm(x) * np.linalg.norm(y)
                cosine = float(np.dot(x.ravel(), y.ravel()) / norm) if norm > 0 else 1.0
                diff = LayerDiff(
                    node, op, tensor, float(d.max(initial=0)), float(np.abs(x).max(initial=0)), cosine
                )
            compared.append(diff)
            if diff.relative > tolerance:
                return LayerReport(compared, diff, tolerance, weights=_weight_difference(a, b, node))
    return LayerReport(compared, None, tolerance)


def _run_exposed(
    model: onnx.ModelProto, names: list[str], input_name: str, batch: np.ndarray
) -> dict[str, np.ndarray]:
    exposed = expose_outputs(model, names)
    session = _session(exposed)
    outputs = session.run(names, {input_name: batch})  # type: ignore[attr-defined]
    return dict(zip(names, outputs, strict=True))


def _weight_difference(a: onnx.ModelProto, b: onnx.ModelProto, node_name: str) -> str | None:
    """How the initializers feeding `node_name` differ between `a` and `b` (None when identical)."""
    node_a = next((n for n in a.graph.node if n.name == node_name), None)
    node_b = next((n for n in b.graph.node if n.name == node_name), None)
    if node_a is None or node_b is None:
        return None
    inits_a = {t.name: t for t in a.graph.initializer}
    inits_b = {t.name: t for t in b.graph.initializer}
    notes = []
    for name_a, name_b in zip(node_a.input, node_b.input, strict=False):
        if name_a not in inits_a or name_b not in inits_b:
            continue
        wa = numpy_helper.to_array(inits_a[name_a]).astype(np.float64)
        wb = numpy_helper.to_array(inits_b[name_b]).astype(np.float64)
        if wa.shape != wb.shape:
            notes.append(f"{name_a}: shape {wa.shape} vs {wb.shape}")
            continue
        if np.array_equal(wa, wb):
            continue
        if wa.ndim >= 2:  # per output channel: the scale b/a, where a is not ~0
            flat_a, flat_b = wa.reshape(wa.shape[0], -1), wb.reshape(wb.shape[0], -1)
            with np.errstate(divide="ignore", invalid="ignore"):
                # (small weights left out: fp16 rounding makes their ratios noisy)
                ratio = np.where(np.abs(flat_a) > 1e-2 * np.abs(flat_a).max(), flat_b / flat_a, np.nan)
            with warnings.catch_warnings():  # a channel of only small weights is all NaN: no verdict
                warnings.simplefilter("ignore", RuntimeWarning)
                per_channel = np.nanmedian(ratio, axis=1)
                spread = np.nanmax(np.abs(ratio - per_channel[:, None]), axis=1)
            if np.all(np.isfinite(per_channel)) and np.nanmax(spread) < 2e-3 * np.nanmax(np.abs(per_channel)):
                lo, hi = float(per_channel.min()), float(per_channel.max())
                notes.append(
                    f"{name_a}: each output channel scaled by one factor, {lo:.4f}..{hi:.4f} — "
                    "what a different BatchNorm eps (or BN folding) leaves in a fused Conv"
                )
                continue
        notes.append(f"{name_a}: values differ by up to {np.abs(wa - wb).max():.3g}")
    return "; ".join(notes) or None
