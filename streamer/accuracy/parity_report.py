"""What `yolostream parity` writes: ``report.md`` with its notes, the summary printed and its JSON; the
pictures it links (a picture per disagreeing frame, a histogram of scores) are drawn by
`streamer.accuracy.parity_pictures`.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from streamer.accuracy.parity_pictures import FRAMES_DIR, HISTOGRAM, draw_histogram, frame_picture_path
from streamer.engine.onnxgraph import fp16_nodes

if TYPE_CHECKING:
    from streamer.accuracy.parity_compare import PairResult, ParityResult
    from streamer.config import Config

# ---------------------------------------------------------------------------------------------- notes


def notes_for(result: ParityResult) -> list[str]:
    """Things the reader must know to interpret the numbers (e.g. a model that computes in fp16)."""
    notes = []
    fp16: dict[Path, int] = {}
    for spec in result.specs:
        if spec.model not in fp16:
            try:
                fp16[spec.model] = fp16_nodes(onnx.load(str(spec.model), load_external_data=False))
            except Exception:
                fp16[spec.model] = 0
    backends = {s.backend for s in result.specs}
    if result.widened:
        notes.append(
            f"{', '.join(result.widened)} ran an fp32 copy of the model, which computes in float16 as stored "
            "(--widen-fp16): the comparison checks fp32 arithmetic; the daemon's onnxruntime runs the file "
            "as stored."
        )
    for model, count in fp16.items():
        if count and backends - {"onnxruntime"} and not result.widened:
            notes.append(
                f"{model.name} computes in float16 ({count} fp16 weights/constants/casts in the graph). "
                "onnxruntime runs it as stored, with fp16 rounding between layers; the torch backend runs "
                "an fp32 copy. Differences between them are fp16 numerics, not a pipeline defect: compare "
                "with `--widen-fp16` to check the backends' fp32 arithmetic alone."
            )
    for pair in result.pairs:
        if pair.precision_differs:
            t = result.thresholds
            boxes = pair.box_deltas()
            notes.append(
                f"{pair.candidate} computes in {pair.precisions[1]}, "
                f"{pair.reference} in {pair.precisions[0]}: "
                f"differences of this size (boxes up to {boxes.max(initial=0):.2f} px, scores up to "
                f"{np.abs(pair.score_deltas()).max(initial=0):.4f}) are the rounding of the lower precision, "
                f"not a pipeline defect; the pair is judged on detections matched at IoU ≥ 0.9 "
                f"(≥ {t.precision_agreement:.0%}) and score |Δ| ≤ {t.precision_score_delta} instead of "
                f"IoU ≥ 0.99 and {t.max_score_delta}."
            )
        if not pair.raw_compared:
            notes.append(
                f"{pair.candidate} vs {pair.reference}: raw outputs not compared — the CUDA executor keeps "
                "only the grid rows above the confidence threshold on the GPU and returns those; the "
                "detections are compared in full."
            )
    for spec in result.specs:
        if spec.preprocess == "cuda":
            notes.append(
                f"{spec.label} letterboxes as the daemon does NVDEC frames: the image converted to NV12 "
                "(BT.601, chroma at half resolution) and letterboxed by the CUDA kernel (by its bit-exact "
                "NumPy model where the engine runs on the CPU). Against RGB input that changes the tensor by "
                "a few levels of 255 on average (more at sharp colour edges), as every 4:2:0 video does: "
                "the preprocessing stage reports that difference by design."
            )
        elif spec.preprocess != "reference":
            notes.append(
                f"{spec.label} uses the preprocessing {spec.preprocess!r}, "
                "not the daemon's reference letterbox."
            )
    return notes


# ---------------------------------------------------------------------------------------------- report


def _verdict(pair: PairResult, result: ParityResult) -> str:
    return "**FAIL**" if pair.failures(result.thresholds) else "PASS"


def format_summary(result: ParityResult) -> str:
    """The console summary: one block per compared pair."""
    lines = [f"parity: {result.frames} frame(s), reference {result.specs[0].label}"]
    for spec, setup in zip(result.specs, result.setups, strict=False):
        lines.append(f"  {spec.label}: {setup.describe()}")
    for pair in result.pairs:
        deltas = pair.score_deltas()
        failures = pair.failures(result.thresholds)
        lines += [
            "",
            f"{pair.candidate} vs {pair.reference}: {'FAIL' if failures else 'PASS'}",
            f"  raw outputs   max|d| {pair.raw.max_abs:.3g} (box {pair.raw.max_box:.3g} px, objectness "
            f"{pair.raw.max_obj:.3g}, class {pair.raw.max_cls:.3g}), mean|d| {pair.raw.mean_abs:.3g}, "
            f"cosine {pair.raw.cosine:.8f}",
            f"  detections    {pair.detections_a} vs {pair.detections_b}; matched (IoU>=0.5) {pair.matched}; "
            f"at IoU>=0.99 {pair.matched_99} ({pair.agreement:.2%}), at IoU>=0.9 {pair.matched_90} "
            f"({pair.agreement_90:.2%}); only in A {pair.only_a}, only in B {pair.only_b}",
            f"  matched pairs score max|d| {np.abs(deltas).max(initial=0):.3g} "
            f"(mean {_mean_abs(deltas):.3g}), box max|d| {pair.box_deltas().max(initial=0):.3g} px "
            f"(mean {_mean_abs(pair.box_deltas()):.3g})"
            + (f"; precision {pair.precisions[1]} vs {pair.precisions[0]}" if pair.precision_differs else ""),
        ]
        if not pair.raw_compared:
            lines[-3] = "  raw outputs   not compared (the GPU executor returns only candidate rows)"
        if pair.inputs is not None:
            causes = "; ".join(pair.inputs.causes) or "none"
            lines.append(
                f"  preprocessing max|d| {pair.inputs.max_levels:.0f} levels, "
                f"{pair.inputs.differing_fraction:.2%} of values differ; cause: {causes}"
            )
        if pair.layers is not None:
            if pair.layers.first is not None:
                first = pair.layers.first
                lines.append(
                    f"  layers        first divergence at {first.node} ({first.op}) -> {first.tensor}: "
                    f"relative error {first.relative:.3g} after {len(pair.layers.compared) - 1} equal tensors"
                )
                if pair.layers.weights:
                    lines.append(f"                weights: {pair.layers.weights}")
            elif pair.layers.skipped:
                lines.append(f"  layers        not compared: {pair.layers.skipped}")
            else:
                lines.append(f"  layers        {len(pair.layers.compared)} tensors within tolerance")
        elif pair.layers_note:
            lines.append(f"  layers        {pair.layers_note}")
        lines += [f"  ! {f}" for f in failures]
    lines.append("")
    lines.append(f"verdict: {'PASS' if result.passed else 'FAIL'}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _mean_abs(values: np.ndarray) -> float:
    return float(np.abs(values).mean()) if values.size else 0.0


def _det_text(dets: np.ndarray, k: int, names: Sequence[str]) -> str:
    x1, y1, x2, y2, score, cls = dets[k].tolist()
    name = names[int(cls)] if int(cls) < len(names) else str(int(cls))
    return f"{name} {score:.4f} [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]"


def write_report(out_dir: Path, result: ParityResult, cfg: Config) -> Path:
    """Write ``report.md`` and the histogram into `out_dir`; returns the report's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = cfg.model.effective_class_names
    t = result.thresholds
    draw_histogram(out_dir / HISTOGRAM, result.pairs)
    nms = result.nms
    nms_line = (
        f"confidence {nms.conf_thres}, IoU {nms.iou_thres}, multi-label {nms.multi_label}, "
        f"agnostic {nms.agnostic}, max {nms.max_det}"
    )
    limits = [
        f"agreement at IoU ≥ 0.99 ≥ {t.min_agreement:.1%}",
        f"score |Δ| ≤ {t.max_score_delta}",
        f"raw scores |Δ| ≤ {t.max_raw_score_delta:g}",
        f"raw cosine ≥ {t.min_cosine}",
        f"preprocessing ≤ {t.input_levels:g} level(s) on ≤ {t.input_fraction:.1%} of values",
        f"layer relative error ≤ {t.layer_tolerance:g}",
        f"between precisions (fp16 vs fp32): at IoU ≥ 0.9 ≥ {t.precision_agreement:.1%}, "
        f"score |Δ| ≤ {t.precision_score_delta}, cosine ≥ {t.precision_cosine}",
    ]
    setup = (
        f"input {cfg.model.input_size or 'from the model'}; channel order {cfg.model.channel_order}; "
        f"device {cfg.engine.device}; precision {cfg.engine.precision}"
    )
    md = [
        f"# Parity report: {'PASS' if result.passed else 'FAIL'}",
        "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- config: `{cfg.source_path}`",
        f"- frames: {result.frames}; {setup}",
        f"- NMS (the config's serving thresholds): {nms_line}",
        f"- thresholds: {', '.join(limits)}",
        f"- time: {result.seconds:.1f} s",
        "",
        "| backend | engine as the daemon runs it | model | preprocessing |",
        "|---|---|---|---|",
    ]
    setups = [s.describe() for s in result.setups] or [s.backend for s in result.specs]
    for k, (spec, setup) in enumerate(zip(result.specs, setups, strict=True)):
        role = "reference (A)" if k == 0 else "candidate (B)"
        md.append(f"| {spec.label} — {role} | {setup} | `{spec.model}` | {spec.preprocess} |")
    if result.notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    md += [
        "",
        "## Summary",
        "",
        "| B vs A | verdict | raw max abs Δ (box px / obj / cls) | raw mean abs Δ | cosine | dets A / B "
        "| matched IoU≥0.5 | at IoU≥0.99 | at IoU≥0.9 | only A / only B | score max abs Δ "
        "| box max abs Δ px |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result.pairs:
        deltas = p.score_deltas()
        raw = (
            f"{p.raw.max_box:.3g} / {p.raw.max_obj:.3g} / {p.raw.max_cls:.3g} | {p.raw.mean_abs:.3g} | "
            f"{p.raw.cosine:.8f}"
            if p.raw_compared
            else "not compared | - | -"
        )
        md.append(
            f"| {p.candidate} vs {p.reference} | {_verdict(p, result)} | {raw} | "
            f"{p.detections_a} / {p.detections_b} | {p.matched} | {p.matched_99} ({p.agreement:.2%}) | "
            f"{p.matched_90} ({p.agreement_90:.2%}) | {p.only_a} / {p.only_b} | "
            f"{np.abs(deltas).max(initial=0):.3g} | {p.box_deltas().max(initial=0):.3g} |"
        )
    md += ["", f"![score differences]({HISTOGRAM})"]
    for p in result.pairs:
        md += _pair_section(out_dir, p, result, names)
    path = out_dir / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _pair_section(out_dir: Path, p: PairResult, result: ParityResult, names: Sequence[str]) -> list[str]:
    md = ["", f"## {p.candidate} vs {p.reference}: {_verdict(p, result)}", ""]
    md += [f"- {f}" for f in p.failures(result.thresholds)] or ["All thresholds met."]
    if p.inputs is not None:
        md += [
            "",
            "### Stage 1: preprocessing",
            "",
            f"Input tensors of {p.inputs.frames} frame(s): "
            f"max |Δ| {p.inputs.max_levels:.0f} levels (of 255), "
            f"{p.inputs.differing_fraction:.2%} of values differ.",
        ]
        md += [f"- {cause} ({n} frame(s))" for cause, n in p.inputs.causes.items()]
    if p.layers is not None or p.layers_note:
        md += ["", "### Stage 2: layers", ""]
        if p.layers_note:
            md.append(p.layers_note + ".")
        if p.layers is not None and p.layers.skipped:
            md.append(f"Not compared: {p.layers.skipped}.")
        elif p.layers is not None:
            first = p.layers.first
            if first is None:
                md.append(
                    f"{len(p.layers.compared)} node outputs compared: all within {p.layers.tolerance:g}."
                )
            else:
                md.append(
                    f"**First diverging node: `{first.node}`** ({first.op}, output `{first.tensor}`): "
                    f"max |Δ| {first.max_abs:.4g} of max |A| {first.scale:.4g} "
                    f"(relative {first.relative:.3g}), "
                    f"after {len(p.layers.compared) - 1} node outputs that agree."
                )
                if p.layers.weights:
                    md.append(f"\nIts weights differ: {p.layers.weights}.")
            md += ["", "| # | node | op | max abs Δ | relative | cosine |", "|---|---|---|---|---|---|"]
            rows = p.layers.compared
            shown = list(enumerate(rows))[-6:]  # the last agreeing ones and the divergent one
            for k, d in shown:
                rel = "inf" if math.isinf(d.relative) else f"{d.relative:.3g}"
                md.append(f"| {k} | `{d.node}` | {d.op} | {d.max_abs:.3g} | {rel} | {d.cosine:.6f} |")
    bad = [f for f in p.frames if not f.agrees]
    md += ["", f"### Disagreeing frames: {len(bad)} of {len(p.frames)}", ""]
    for f in bad[:50]:
        pic = frame_picture_path(out_dir, p, f).relative_to(out_dir)
        md.append(f"#### {f.name} (raw max |Δ| {f.raw_max:.3g})")
        md.append("")
        for i in f.only_a:
            md.append(f"- only in A: {_det_text(f.dets_a, i, names)}")
        for j in f.only_b:
            md.append(f"- only in B: {_det_text(f.dets_b, j, names)}")
        for i, j, iou in f.loose_pairs():
            md.append(
                f"- IoU {iou:.4f}: A {_det_text(f.dets_a, i, names)} / B {_det_text(f.dets_b, j, names)}"
            )
        md += ["", f"![{f.name}]({pic.as_posix()})", ""]
    if len(bad) > 50:
        md.append(f"({len(bad) - 50} more disagreeing frames have pictures in `{FRAMES_DIR}/`.)")
    return md


def summary_json(result: ParityResult) -> dict[str, Any]:
    """A machine-readable summary (written as ``summary.json`` beside the report)."""
    pairs = []
    for p in result.pairs:
        deltas = p.score_deltas()
        first = p.layers.first if p.layers is not None else None
        pairs.append({
            "reference": p.reference, "candidate": p.candidate,
            "verdict": "FAIL" if p.failures(result.thresholds) else "PASS",
            "failures": p.failures(result.thresholds),
            "raw": {"max_abs": p.raw.max_abs, "mean_abs": p.raw.mean_abs, "cosine": p.raw.cosine,
                    "max_abs_box": p.raw.max_box, "max_abs_objectness": p.raw.max_obj,
                    "max_abs_class": p.raw.max_cls},
            "precisions": {"reference": p.precisions[0], "candidate": p.precisions[1]},
            "raw_compared": p.raw_compared,
            "detections": {"reference": p.detections_a, "candidate": p.detections_b, "matched": p.matched,
                           "matched_iou_0.99": p.matched_99, "agreement": p.agreement,
                           "matched_iou_0.9": p.matched_90, "agreement_0.9": p.agreement_90,
                           "box_delta_max": float(p.box_deltas().max(initial=0)),
                           "only_reference": p.only_a, "only_candidate": p.only_b,
                           "score_delta_max": float(np.abs(deltas).max()) if deltas.size else 0.0,
                           "score_delta_mean": float(deltas.mean()) if deltas.size else 0.0},
            "preprocessing": None if p.inputs is None else {
                "max_levels": p.inputs.max_levels, "differing_fraction": p.inputs.differing_fraction,
                "causes": p.inputs.causes},
            "first_diverging_layer": None if first is None else {
                "node": first.node, "op": first.op, "tensor": first.tensor, "relative_error": first.relative,
                "weights": p.layers.weights if p.layers else None},
        })  # fmt: skip
    return {
        "verdict": "PASS" if result.passed else "FAIL",
        "frames": result.frames,
        "backends": [asdict(s) | {"model": str(s.model)} for s in result.specs],
        "engines": [asdict(s) | {"description": s.describe()} for s in result.setups],
        "thresholds": asdict(result.thresholds),
        "nms": asdict(result.nms),
        "notes": result.notes,
        "pairs": pairs,
    }
