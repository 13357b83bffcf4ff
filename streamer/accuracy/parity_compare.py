"""The comparisons of `yolostream parity`: raw outputs, detections, and the verdict against thresholds.

`RawStats` accumulates the differences of two backends' raw outputs; `match_detections` pairs their
detections (same class, IoU ≥ 0.5, best first, one to one); `PairResult` holds one candidate's
comparison with the reference over all frames and says, with `PairResult.failures`, which `Thresholds`
it misses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from streamer.accuracy.parity_stages import InputDiff, LayerReport
from streamer.postprocess.nms import NmsParams, box_iou

if TYPE_CHECKING:
    from streamer.accuracy.eval_pipeline import EngineSetup
    from streamer.accuracy.parity_backends import BackendSpec

__all__ = ["FrameDiff", "PairResult", "ParityResult", "RawStats", "Thresholds", "match_detections"]


@dataclass(frozen=True)
class Thresholds:
    """What a comparison must meet to PASS."""

    min_agreement: float = 0.999
    """Share of detections matched at IoU ≥ 0.99, same class (pairs over the larger count)."""
    max_score_delta: float = 0.01
    """Largest |score difference| of a matched pair."""
    min_cosine: float = 0.9999
    """Cosine similarity of the raw outputs (all frames, all values)."""
    max_raw_score_delta: float = 1e-3
    """Largest |Δ| of a raw objectness or class score, over every row of the output (not only the
    detections): fp32 backends agree to ~1e-5; a wrong layer deep in the network shows here first."""
    input_levels: float = 1.0
    """Preprocessing: largest difference of an input value, in 0..255 levels."""
    input_fraction: float = 0.001
    """Preprocessing: share of input values that may differ at all."""
    layer_tolerance: float = 1e-3
    """Layers: relative error ``max |a - b| / max |a|`` of a node output."""
    precision_agreement: float = 0.99
    """Backends of different precisions (fp16 vs fp32): share of detections matched at IoU ≥ 0.9, which
    replaces `min_agreement` (fp16 rounding moves boxes by a fraction of a pixel)."""
    precision_score_delta: float = 0.05
    """Backends of different precisions: largest |score difference| of a matched pair (replaces
    `max_score_delta`; the raw-score limit does not apply, the cosine limit is `precision_cosine`)."""
    precision_cosine: float = 0.999


@dataclass
class RawStats:
    """Accumulated differences of the raw outputs ``[boxes, 5 + nc]`` of two backends."""

    count: int = 0
    abs_sum: float = 0.0
    max_box: float = 0.0
    max_obj: float = 0.0
    max_cls: float = 0.0
    dot: float = 0.0
    norm_a: float = 0.0
    norm_b: float = 0.0

    @property
    def max_abs(self) -> float:
        return max(self.max_box, self.max_obj, self.max_cls)

    @property
    def mean_abs(self) -> float:
        return self.abs_sum / self.count if self.count else 0.0

    @property
    def cosine(self) -> float:
        norm = math.sqrt(self.norm_a) * math.sqrt(self.norm_b)
        return self.dot / norm if norm > 0 else 1.0

    def add(self, a: np.ndarray, b: np.ndarray) -> float:
        """Accumulate one frame; returns its max |Δ|."""
        d = np.abs(a - b)
        self.count += d.size
        self.abs_sum += float(d.sum(dtype=np.float64))
        self.max_box = max(self.max_box, float(d[:, :4].max(initial=0)))
        self.max_obj = max(self.max_obj, float(d[:, 4].max(initial=0)))
        self.max_cls = max(self.max_cls, float(d[:, 5:].max(initial=0)))
        a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        self.dot += float(a64 @ b64)
        self.norm_a += float(a64 @ a64)
        self.norm_b += float(b64 @ b64)
        return float(d.max(initial=0))


@dataclass
class FrameDiff:
    """The detections of one frame from the reference (a) and a candidate (b), matched."""

    name: str
    dets_a: np.ndarray
    dets_b: np.ndarray
    pairs: list[tuple[int, int, float]]
    """(index in a, index in b, IoU) of matched detections (same class, IoU ≥ 0.5)."""
    raw_max: float = 0.0

    @property
    def only_a(self) -> list[int]:
        matched = {i for i, _, _ in self.pairs}
        return [i for i in range(len(self.dets_a)) if i not in matched]

    @property
    def only_b(self) -> list[int]:
        matched = {j for _, j, _ in self.pairs}
        return [j for j in range(len(self.dets_b)) if j not in matched]

    def loose_pairs(self, iou: float = 0.99) -> list[tuple[int, int, float]]:
        return [p for p in self.pairs if p[2] < iou]

    @property
    def agrees(self) -> bool:
        return not self.only_a and not self.only_b and not self.loose_pairs()


def match_detections(a: np.ndarray, b: np.ndarray, min_iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching of ``[K, 6]`` detections of the same class, best IoU first."""
    if len(a) == 0 or len(b) == 0:
        return []
    iou = np.nan_to_num(box_iou(a[:, :4], b[:, :4]))
    iou[a[:, 5:6] != b[None, :, 5]] = -1.0
    pairs = []
    order = np.dstack(np.unravel_index(np.argsort(-iou, axis=None, kind="stable"), iou.shape))[0]
    used_a: set[int] = set()
    used_b: set[int] = set()
    for i, j in order:
        value = float(iou[i, j])
        if value < min_iou:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(int(i))
        used_b.add(int(j))
        pairs.append((int(i), int(j), value))
    return sorted(pairs)


@dataclass
class PairResult:
    """The comparison of one candidate backend with the reference."""

    reference: str
    candidate: str
    raw: RawStats = field(default_factory=RawStats)
    frames: list[FrameDiff] = field(default_factory=list)
    inputs: InputDiff | None = None
    layers: LayerReport | None = None
    layers_note: str | None = None
    worst_frame: tuple[float, str, np.ndarray | None] = (-1.0, "", None)
    """(raw max |Δ|, name, reference input tensor) of the frame where the outputs differ most."""
    raw_compared: bool = True
    """False when a backend's executor returned only candidate rows (the GPU confidence filter)."""
    precisions: tuple[str, str] = ("fp32", "fp32")
    """(reference, candidate) precision the engines compute in."""

    @property
    def precision_differs(self) -> bool:
        return self.precisions[0] != self.precisions[1]

    @property
    def detections_a(self) -> int:
        return sum(len(f.dets_a) for f in self.frames)

    @property
    def detections_b(self) -> int:
        return sum(len(f.dets_b) for f in self.frames)

    @property
    def matched(self) -> int:
        return sum(len(f.pairs) for f in self.frames)

    @property
    def matched_99(self) -> int:
        return sum(sum(p[2] >= 0.99 for p in f.pairs) for f in self.frames)

    @property
    def matched_90(self) -> int:
        return sum(sum(p[2] >= 0.9 for p in f.pairs) for f in self.frames)

    @property
    def agreement(self) -> float:
        """Pairs at IoU ≥ 0.99 over the larger detection count."""
        most = max(self.detections_a, self.detections_b)
        return self.matched_99 / most if most else 1.0

    @property
    def agreement_90(self) -> float:
        """Pairs at IoU ≥ 0.9 over the larger detection count."""
        most = max(self.detections_a, self.detections_b)
        return self.matched_90 / most if most else 1.0

    def box_deltas(self) -> np.ndarray:
        """Largest |Δ| of the four coordinates (source pixels) of every matched pair."""
        values = [
            float(np.abs(f.dets_b[j, :4] - f.dets_a[i, :4]).max()) for f in self.frames for i, j, _ in f.pairs
        ]
        return np.asarray(values, dtype=np.float64)

    @property
    def only_a(self) -> int:
        return sum(len(f.only_a) for f in self.frames)

    @property
    def only_b(self) -> int:
        return sum(len(f.only_b) for f in self.frames)

    def score_deltas(self) -> np.ndarray:
        """Score of b minus score of a, for every matched pair."""
        values = [f.dets_b[j, 4] - f.dets_a[i, 4] for f in self.frames for i, j, _ in f.pairs]
        return np.asarray(values, dtype=np.float64)

    def failures(self, t: Thresholds) -> list[str]:
        """Why this comparison fails `t` (empty: it passes).

        Between engines of different precisions the limits are `Thresholds`' ``precision_*`` ones.
        """
        out = []
        deltas = np.abs(self.score_deltas())
        if self.precision_differs:
            why = f" ({self.precisions[1]} vs {self.precisions[0]})"
            if self.agreement_90 < t.precision_agreement:
                share, limit = self.agreement_90, t.precision_agreement
                out.append(f"detections matched at IoU ≥ 0.9: {share:.2%} < {limit:.2%}{why}")
            if deltas.size and deltas.max() > t.precision_score_delta:
                out.append(f"score difference up to {deltas.max():.4f} > {t.precision_score_delta}{why}")
            if self.raw_compared and self.raw.cosine < t.precision_cosine:
                out.append(f"raw output cosine similarity {self.raw.cosine:.6f} < {t.precision_cosine}{why}")
        else:
            if self.agreement < t.min_agreement:
                out.append(f"detections matched at IoU ≥ 0.99: {self.agreement:.2%} < {t.min_agreement:.2%}")
            if deltas.size and deltas.max() > t.max_score_delta:
                out.append(f"score difference up to {deltas.max():.4f} > {t.max_score_delta}")
            raw_scores = max(self.raw.max_obj, self.raw.max_cls)
            if self.raw_compared and raw_scores > t.max_raw_score_delta:
                limit = t.max_raw_score_delta
                out.append(f"raw objectness/class scores differ by up to {raw_scores:.3g} > {limit:g}")
            if self.raw_compared and self.raw.cosine < t.min_cosine:
                out.append(f"raw output cosine similarity {self.raw.cosine:.6f} < {t.min_cosine}")
        if self.inputs is not None and not self.inputs.passes(t.input_levels, t.input_fraction):
            causes = "; ".join(self.inputs.causes) or "unknown cause"
            out.append(f"preprocessing differs (up to {self.inputs.max_levels:.0f} levels): {causes}")
        if self.layers is not None and self.layers.first is not None:
            first = self.layers.first
            out.append(
                f"first diverging layer: {first.node} ({first.op}, output {first.tensor}): "
                f"relative error {first.relative:.3g} > {self.layers.tolerance:g}"
            )
        return out


@dataclass
class ParityResult:
    pairs: list[PairResult]
    specs: list[BackendSpec]
    thresholds: Thresholds
    frames: int
    nms: NmsParams
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    widened: list[str] = field(default_factory=list)
    """Labels of the backends that ran an fp32 copy of a float16 model (``widen_fp16``)."""
    setups: list[EngineSetup] = field(default_factory=list)
    """What ran each backend (engine, precision, executor, device), in `specs` order."""

    @property
    def passed(self) -> bool:
        return not any(p.failures(self.thresholds) for p in self.pairs)
