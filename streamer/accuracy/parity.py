"""``yolostream parity``: do two inference backends see the same thing in the same frames?

The same frames go through every backend named with ``--backends``, each opened exactly as the daemon
opens it (`streamer.accuracy.eval_pipeline`: the config's engine section with the backend's overrides, the
executor — CPU, or CUDA streams with NMS's first step on the GPU — and the worker's decoding), with the
config's model, input size, channel order, serving thresholds and NMS. The first backend is the
reference; each other one is compared with it on

- the raw outputs: max and mean |Δ| (box coordinates in input pixels, objectness, class scores
  separately) and the cosine similarity of the whole output (where both executors return the whole
  output: the CUDA executor's GPU filter returns only the candidate rows);
- the detections the daemon would publish: pairs of the same class matched greedily by IoU (≥ 0.5),
  the share of detections matched at IoU ≥ 0.99 (``agreement``: pairs at 0.99 over the larger of the
  two counts) and at IoU ≥ 0.9, score and box-coordinate differences of the pairs, and the boxes only
  one of the two found;
- with ``--stages``: the preprocessing (each backend's input tensor against the reference's, with the
  cause named) and, for two ONNX Runtime backends, the model layer by layer (the first node whose output
  diverges, see `streamer.accuracy.parity_stages`).

A backend is written ``NAME[/PRECISION][/compiled|eager][:MODEL][@PREPROCESS]``: ``onnxruntime``,
``torch``, ``torch/fp16`` (engine.precision fp16), ``torch/fp16/compiled`` (and engine.compile on),
``onnxruntime:other.onnx`` (the same backend on another model file, e.g. a re-export or a suspect copy),
``onnxruntime@pad128`` (another preprocessing implementation, see `PREPROCESSORS`). Two engines that
compute in different precisions (fp16 vs fp32) are judged on matches at IoU ≥ 0.9 and a looser score
limit (`Thresholds`' ``precision_*``), and the report says that precision is the cause of what differs.

The verdict is PASS when every comparison meets `Thresholds`; the report (``report.md``), a picture of
each disagreeing frame and a histogram of score differences go to the output folder.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from streamer.accuracy.eval_pipeline import DeployedPipeline, EngineSetup, Prepared, open_pipeline
from streamer.accuracy.parity_backends import BackendSpec, ParityError, parse_backends
from streamer.accuracy.parity_compare import (
    FrameDiff,
    PairResult,
    ParityResult,
    Thresholds,
    match_detections,
)
from streamer.accuracy.parity_stages import PREPROCESSORS, InputDiff, first_divergence
from streamer.engine.onnxgraph import fp16_nodes, widen_to_fp32
from streamer.postprocess.nms import NmsParams, serving_nms

if TYPE_CHECKING:
    from streamer.config import Config

__all__ = [
    "FrameDiff",
    "PairResult",
    "ParityResult",
    "Thresholds",
    "match_detections",
    "read_frames",
    "run_parity",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ONNX_BACKENDS = ("onnxruntime",)
"""Backends whose model is the ONNX graph itself, so that its layers can be compared."""


# --------------------------------------------------------------------------------------------- frames


def read_frames(
    images: Path | None = None, video: Path | None = None, max_frames: int | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, RGB HxWx3 uint8)`` of the images of a folder (sorted by name) or the frames of a video."""
    count = 0
    if images is not None:
        from streamer.accuracy.evaluate import read_rgb

        files = (
            sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if images.is_dir()
            else []
        )
        if not files:
            raise ParityError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images}")
        for path in files:
            if max_frames is not None and count >= max_frames:
                return
            yield path.name, read_rgb(path)
            count += 1
    elif video is not None:
        import av

        try:
            container = av.open(str(video))
        except (av.error.FFmpegError, OSError) as exc:
            raise ParityError(f"cannot open video {video}: {exc}") from exc
        with container:
            for frame in container.decode(video=0):
                if max_frames is not None and count >= max_frames:
                    return
                yield f"{video.stem}#{count:05d}", frame.to_ndarray(format="rgb24")
                count += 1
    else:
        raise ParityError("give images or a video")


# ------------------------------------------------------------------------------------------------- run


def _pipelines(cfg: Config, specs: Sequence[BackendSpec], nms: NmsParams) -> list[DeployedPipeline]:
    """Each backend as the daemon opens it (`streamer.accuracy.eval_pipeline`), with the spec's overrides."""
    pipes: list[DeployedPipeline] = []
    try:
        for spec in specs:
            pipes.append(open_pipeline(cfg, spec.model, nms, spec.overrides(), keep_raw=True))
    except BaseException:
        for pipe in pipes:
            pipe.close()
        raise
    sizes = {(p.height, p.width) for p in pipes}
    if len(sizes) != 1:
        for pipe in pipes:
            pipe.close()
        raise ParityError(f"the backends' models take different input sizes: {sorted(sizes)}")
    return pipes


def _computes_in(setup: EngineSetup) -> str:
    """The precision an engine computes in: ONNX Runtime runs the file as stored (fp32 for parity's
    purpose; a file stored in fp16 gets its own note, `streamer.accuracy.parity_report.notes_for`)."""
    return "fp32" if setup.backend == "onnxruntime" else setup.precision


def _infer(pipe: DeployedPipeline, frame: np.ndarray | Prepared) -> tuple[np.ndarray, np.ndarray | None]:
    """One frame through `pipe`: detections in source pixels and the raw output (None where the GPU
    executor returned only the candidate rows)."""
    for _, dets, raw in pipe.run([(0, frame)]):
        return dets, raw
    raise ParityError("the executor returned no result")  # (run yields one result per frame)


def run_parity(
    cfg: Config,
    frames: Iterable[tuple[str, np.ndarray]],
    specs: Sequence[BackendSpec],
    *,
    stages: bool = False,
    thresholds: Thresholds | None = None,
    out_dir: Path | None = None,
    widen_fp16: bool = False,
) -> ParityResult:
    """Run `frames` through every backend of `specs` and compare each with the first.

    With `out_dir`, writes the report, the pictures of disagreeing frames and the score histogram there
    (see `streamer.accuracy.parity_report`). With `widen_fp16`, ONNX Runtime backends run an fp32 copy of a
    model
    that computes in float16 (what the torch backend runs), so that only the backends' arithmetic differs.
    """
    with tempfile.TemporaryDirectory(prefix="yolostream-parity-") as tmp:
        widened: list[str] = []
        if widen_fp16:
            specs, widened = _widen_specs(specs, Path(tmp))
        result = _run(cfg, frames, specs, stages, thresholds or Thresholds(), out_dir, widened)
    return result


def _widen_specs(specs: Sequence[BackendSpec], tmp: Path) -> tuple[list[BackendSpec], list[str]]:
    out, widened, copies = [], [], {}
    for spec in specs:
        if spec.backend in ONNX_BACKENDS:
            if spec.model not in copies:
                proto = onnx.load(str(spec.model))
                copies[spec.model] = spec.model
                if fp16_nodes(proto):
                    copy = tmp / f"{len(copies)}-{spec.model.stem}.fp32.onnx"
                    onnx.save(widen_to_fp32(proto), str(copy))
                    copies[spec.model] = copy
            if copies[spec.model] != spec.model:
                widened.append(spec.label)
                spec = replace(spec, model=copies[spec.model])
        out.append(spec)
    return out, widened


def _run(
    cfg: Config,
    frames: Iterable[tuple[str, np.ndarray]],
    specs: Sequence[BackendSpec],
    stages: bool,
    thresholds: Thresholds,
    out_dir: Path | None,
    widened: list[str],
) -> ParityResult:
    from streamer.accuracy.parity_pictures import draw_frame
    from streamer.accuracy.parity_report import notes_for, write_report

    nms = serving_nms(cfg.detection)
    swap_rb = cfg.model.channel_order == "bgr"
    started = time.monotonic()
    pipes = _pipelines(cfg, specs, nms)
    try:
        h, w = pipes[0].height, pipes[0].width
        computes_in = [_computes_in(p.setup) for p in pipes]
        pairs = [
            PairResult(specs[0].label, s.label, precisions=(computes_in[0], computes_in[k]))
            for k, s in enumerate(specs[1:], start=1)
        ]
        if stages:
            for pair, spec in zip(pairs, specs[1:], strict=True):
                if spec.preprocess != specs[0].preprocess:
                    pair.inputs = InputDiff()
        count = 0
        for name, rgb in frames:
            count += 1
            inputs = {}
            for spec in specs:
                if spec.preprocess not in inputs:
                    inputs[spec.preprocess] = PREPROCESSORS[spec.preprocess](rgb, w, h, swap_rb)
            raws, dets = [], []
            for spec, pipe in zip(specs, pipes, strict=True):
                on_gpu = pipe.setup.preprocess == "cuda"  # the kernel letterboxes the frame itself
                found, raw = _infer(pipe, rgb if on_gpu else Prepared(*inputs[spec.preprocess]))
                raws.append(raw)
                dets.append(found)
            ref_tensor, ref_geometry = inputs[specs[0].preprocess]
            for k, pair in enumerate(pairs, start=1):
                frame = FrameDiff(name, dets[0], dets[k], match_detections(dets[0], dets[k]))
                ref_raw, raw = raws[0], raws[k]
                if ref_raw is not None and raw is not None:
                    frame.raw_max = pair.raw.add(ref_raw, raw)
                else:
                    pair.raw_compared = False
                pair.frames.append(frame)
                if frame.raw_max > pair.worst_frame[0]:
                    pair.worst_frame = (frame.raw_max, name, ref_tensor.copy())
                if pair.inputs is not None:
                    pair.inputs.add(ref_tensor, inputs[specs[k].preprocess][0], ref_geometry)
                if out_dir is not None and not frame.agrees:
                    draw_frame(out_dir, rgb, frame, pair, cfg.model.effective_class_names)
            log.debug("frame %s done", name)
        if count == 0:
            raise ParityError("no frames to compare")
    finally:
        for pipe in pipes:
            pipe.close()
    if stages:
        for pair, spec in zip(pairs, specs[1:], strict=True):
            _layer_stage(pair, specs[0], spec, thresholds)
    result = ParityResult(
        pairs, list(specs), thresholds, count, nms, seconds=time.monotonic() - started, widened=widened,
        setups=[p.setup for p in pipes],
    )  # fmt: skip
    result.notes = notes_for(result)
    if out_dir is not None:
        write_report(out_dir, result, cfg)
    return result


def _layer_stage(pair: PairResult, a: BackendSpec, b: BackendSpec, t: Thresholds) -> None:
    """Compare the two models layer by layer on the worst frame (ONNX Runtime backends only)."""
    if a.backend not in ONNX_BACKENDS or b.backend not in ONNX_BACKENDS:
        pair.layers_note = (
            f"layers not compared: the layer stage runs two ONNX graphs in ONNX Runtime "
            f"({a.backend} vs {b.backend}); compare a torch or TensorRT engine by its outputs above"
        )
        return
    if a.model.resolve() == b.model.resolve():
        pair.layers_note = "layers not compared: both backends run the same model file"
        return
    _, name, tensor = pair.worst_frame
    if tensor is None:
        return
    log.info("comparing the layers of %s and %s on frame %s", a.model.name, b.model.name, name)
    pair.layers = first_divergence(a.model, b.model, tensor[None], tolerance=t.layer_tolerance)
    pair.layers_note = f"layers compared on frame {name} (the frame whose raw outputs differ most)"


def parity_main(
    config: str,
    *,
    images: str | None,
    video: str | None,
    backends: str,
    stages: bool,
    out: str,
    max_frames: int | None,
    thresholds: Thresholds,
    widen_fp16: bool = False,
) -> int:
    """The ``yolostream parity`` command: run, print the summary, write the report; 0 PASS, 1 FAIL."""
    from streamer.accuracy.parity_report import format_summary, summary_json
    from streamer.config import load_config
    from streamer.models.registry import resolve

    cfg = load_config(config)
    specs = parse_backends(backends, resolve(cfg.model), Path.cwd())
    frames = read_frames(Path(images) if images else None, Path(video) if video else None, max_frames)
    out_dir = Path(out)
    result = run_parity(
        cfg, frames, specs, stages=stages, thresholds=thresholds, out_dir=out_dir, widen_fp16=widen_fp16
    )
    (out_dir / "summary.json").write_text(json.dumps(summary_json(result), indent=2) + "\n")
    print(format_summary(result))
    print(f"\nreport: {out_dir / 'report.md'}")
    return 0 if result.passed else 1
