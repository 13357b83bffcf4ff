"""COCO mAP of the deployed pipeline: ``yolostream eval CONFIG --coco ANN.json --images DIR | --video CLIP``.

Every frame goes through exactly the steps the daemon applies to a decoded frame, with the daemon's own
parts (`streamer.accuracy.eval_pipeline`):

    image file (cv2.imread → RGB, as the frame rings hold it) or a clip decoded by the daemon's source
    (PyAV or NVDEC, `streamer.accuracy.eval_video`) → the daemon's letterbox (CPU, or the CUDA kernel on the
    GPU) → the engine and executor the daemon opens for the config (backend, device, precision, compile)
    → the daemon's NMS → boxes mapped to source pixels with the letterbox geometry

and the detections are scored by pycocotools' COCOeval (bbox): mAP@[.5:.95], mAP@.5 and the AP of each
class. The NMS thresholds of an evaluation are not the serving ones of the config: by default they are
those of yolov7's ``test.py`` (confidence 0.001, IoU 0.65, multi-label, 300 detections per image).

The annotation file's categories are paired with the model's classes by name, or explicitly
(`streamer.accuracy.eval_classes`): a file may hold a subset of the model's classes; detections of the others
are left out, and the result lists which classes were evaluated and which were ignored. COCO's 80 class names
land on its 91-id scheme (person 1, ..., toothbrush 90) by name.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from streamer.accuracy.eval_classes import ClassMapping, class_mapping, parse_class_map
from streamer.accuracy.eval_pipeline import Overrides, open_pipeline
from streamer.accuracy.eval_video import ClipFrames, frame_indices
from streamer.errors import EXIT_OK, YolostreamError
from streamer.models.registry import resolve
from streamer.postprocess.nms import NmsParams

if TYPE_CHECKING:
    from streamer.config import Config

__all__ = ["EvalError", "EvalParams", "EvalResult", "evaluate", "format_table", "read_rgb"]

log = logging.getLogger(__name__)


class EvalError(YolostreamError, ValueError):
    """The annotations or images cannot be evaluated (missing files, unknown classes, no evaluator)."""


@dataclass(frozen=True)
class EvalParams:
    """NMS settings of an evaluation; the defaults are yolov7 ``test.py``'s."""

    conf: float = 0.001
    iou: float = 0.65
    multi_label: bool = True
    max_det: int = 300
    agnostic: bool = False

    def nms(self) -> NmsParams:
        return NmsParams(
            conf_thres=self.conf,
            iou_thres=self.iou,
            max_det=self.max_det,
            agnostic=self.agnostic,
            multi_label=self.multi_label,
        )


@dataclass
class ClassAP:
    class_id: int
    name: str
    category_id: int
    instances: int
    """Ground-truth boxes of this class (crowd boxes excluded)."""
    ap: float
    """AP@[.5:.95] (NaN when the class has no ground truth in the evaluated images)."""
    ap50: float
    category: str = ""
    """The annotation file's name of the category (differs from `name` through ``--class-map``)."""


@dataclass
class EvalResult:
    map: float
    """COCO mAP@[.5:.95] (area all, 100 detections per image, as COCOeval's first statistic)."""
    map50: float
    map75: float
    images: int
    detections: int
    instances: int
    per_class: list[ClassAP] = field(default_factory=list)
    stats: list[float] = field(default_factory=list)
    """COCOeval's 12 summary statistics, in its order."""
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    evaluated: list[str] = field(default_factory=list)
    """Model classes scored (those the annotation file has a category for)."""
    ignored: list[str] = field(default_factory=list)
    """Model classes the file has no category for: their detections were left out."""
    not_evaluated: list[str] = field(default_factory=list)
    """Categories of the file that no model class matches: not scored."""
    setup: dict[str, Any] = field(default_factory=dict)
    """The engine, precision, preprocessing and device that produced the numbers (`EngineSetup`)."""
    source: str = ""
    """Where the frames came from (an image folder, or a video and its decoder)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for row in out["per_class"]:  # JSON has no NaN
            for key in ("ap", "ap50"):
                row[key] = None if math.isnan(row[key]) else row[key]
        return out


def read_rgb(path: Path) -> np.ndarray:
    """An image file as an RGB ``HxWx3`` uint8 array, as a source worker would put a frame in its ring."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise EvalError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _coco_api() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as exc:
        raise EvalError(f"yolostream eval needs pycocotools ({exc}): pip install 'yolostream[eval]'") from exc
    return COCO, COCOeval


def evaluate(
    cfg: Config,
    annotations: Path,
    images_dir: Path | None = None,
    params: EvalParams | None = None,
    *,
    video: Path | None = None,
    decoder: str | None = None,
    overrides: Overrides | None = None,
    class_map: Sequence[tuple[str, str]] = (),
) -> EvalResult:
    """COCO bbox evaluation of `cfg`'s deployed pipeline on the images (or video frames) of `annotations`.

    Args:
        cfg: the daemon's config: model, engine (backend, device, precision, compile), channel order; not
            its serving thresholds.
        annotations: a COCO instances JSON; its categories may be a subset of the model's classes.
        images_dir: the folder of the images (looked up by the JSON's ``file_name``); or
        video: a clip whose frames are the file's images (`streamer.accuracy.eval_video`), decoded by the
            daemon's source with `decoder` (default: the config's first stream's).
        params: the evaluation NMS settings (yolov7 test.py's by default).
        overrides: engine settings instead of the config's (backend, precision, compile, device,
            preprocessing).
        class_map: explicit (model class, file category) pairs (`streamer.accuracy.eval_classes`).

    Returns:
        The summary statistics, per-class AP, the class pairing and the engine that produced them.

    Raises:
        EvalError, ClassMapError, VideoError: missing images, classes that cannot be paired, a clip that
            does not fit the file, pycocotools not installed.
    """
    if (images_dir is None) == (video is None):
        raise EvalError("evaluate images (a folder) or a video, one of the two")
    params = params or EvalParams()
    COCO, COCOeval = _coco_api()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(annotations))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"cannot read the COCO annotation file {annotations}: {exc}") from exc
    entries = sorted(gt.imgs.values(), key=lambda im: im["id"])
    if not entries:
        raise EvalError(f"{annotations} lists no images")
    mapping = class_mapping(cfg.model.effective_class_names, list(gt.cats.values()), class_map,
                            source=annotations.name)  # fmt: skip
    by_frame = frame_indices(entries, annotations.name) if video is not None else {}
    if images_dir is not None:
        _check_images(entries, images_dir, annotations)
    pipeline = open_pipeline(cfg, resolve(cfg.model), params.nms(), overrides)
    with pipeline:
        if pipeline.executor.spec.num_classes != len(mapping.class_names):
            raise EvalError(
                f"the model predicts {pipeline.executor.spec.num_classes} classes but the config names "
                f"{len(mapping.class_names)}; set model.class_names"
            )
        clip = None
        frames: Iterable[tuple[int, Any]] = ()
        if video is not None:
            clip = ClipFrames(cfg, video, by_frame, decoder=decoder, engine_on_gpu=pipeline.executor.on_gpu)
            frames = clip
        elif images_dir is not None:
            frames = ((im["id"], read_rgb(images_dir / im["file_name"])) for im in entries)
        started = time.monotonic()
        results: list[dict[str, Any]] = []
        for image_id, dets, _ in pipeline.run(frames):
            for x1, y1, x2, y2, score, cls in dets.tolist():
                category = mapping.category_of.get(int(cls))
                if category is None:  # a class the file does not have: left out
                    continue
                results.append({
                    "image_id": image_id, "category_id": category,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
                })  # fmt: skip
        seconds = time.monotonic() - started
    result = _score(gt, COCOeval, results, [im["id"] for im in entries], mapping, params, seconds)
    result.setup = asdict(pipeline.setup) | {"description": pipeline.setup.describe()}
    if clip is not None:
        result.source = f"video {clip.video.name}, decoded by the daemon's {clip.decoder} source"
        result.setup["decoder"] = clip.decoder
    else:
        result.source = f"images in {images_dir}"
    return result


def _check_images(entries: list[dict[str, Any]], images_dir: Path, annotations: Path) -> None:
    paths = [images_dir / im["file_name"] for im in entries]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise EvalError(
            f"{len(missing)} of the {len(paths)} images of {annotations.name} are not in {images_dir} "
            f"(first: {missing[0].name})"
        )


def _score(
    gt: Any,
    COCOeval: Any,
    results: list[dict[str, Any]],
    image_ids: list[int],
    mapping: ClassMapping,
    params: EvalParams,
    seconds: float,
) -> EvalResult:
    pairs = mapping.evaluated
    cat_ids = [cat for _, cat in pairs]
    instances = {cid: len(gt.getAnnIds(imgIds=image_ids, catIds=[cid], iscrowd=False)) for cid in cat_ids}
    extra: dict[str, Any] = {
        "evaluated": [mapping.class_names[c] for c, _ in pairs],
        "ignored": list(mapping.ignored),
        "not_evaluated": list(mapping.not_evaluated),
    }
    if not results:  # COCO.loadRes refuses an empty list: nothing detected scores 0 everywhere
        per_class = [
            ClassAP(c, mapping.class_names[c], cat, instances[cat], 0.0 if instances[cat] else math.nan,
                    0.0 if instances[cat] else math.nan, mapping.category_names[cat])
            for c, cat in pairs
        ]  # fmt: skip
        return EvalResult(0.0, 0.0, 0.0, len(image_ids), 0, sum(instances.values()), per_class, [0.0] * 12,
                          asdict(params), seconds, **extra)  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = image_ids
        ev.params.catIds = sorted(cat_ids)  # categories no model class matches are not scored
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou thresholds, recall, categories, area ranges, max dets]
    column = {cid: k for k, cid in enumerate(ev.params.catIds)}
    per_class = []
    for cls, cid in pairs:
        p = precision[:, :, column[cid], 0, -1]
        valid = p[p > -1]
        p50 = p[0][p[0] > -1]
        per_class.append(
            ClassAP(
                cls, mapping.class_names[cls], cid, instances[cid],
                float(valid.mean()) if valid.size else math.nan,
                float(p50.mean()) if p50.size else math.nan, mapping.category_names[cid],
            )
        )  # fmt: skip
    stats = [float(s) for s in ev.stats]
    return EvalResult(
        map=stats[0], map50=stats[1], map75=stats[2], images=len(image_ids), detections=len(results),
        instances=sum(instances.values()), per_class=per_class, stats=stats, params=asdict(params),
        seconds=seconds, **extra,
    )  # fmt: skip


def format_table(result: EvalResult, *, all_classes: bool = False) -> str:
    """A plain-text table: what ran, the summary, the classes, then AP per class (classes with ground
    truth unless `all_classes`)."""
    p = result.params
    lines = []
    if result.setup:
        lines.append(f"{result.setup.get('description')}")
    if result.source:
        lines.append(f"frames: {result.source}")
    lines += [
        f"images {result.images}   ground-truth boxes {result.instances}   detections {result.detections}   "
        f"(conf {p.get('conf')}, NMS IoU {p.get('iou')}, multi-label {p.get('multi_label')}, "
        f"max {p.get('max_det')} per image; inference {result.seconds:.1f} s)",
        f"classes evaluated ({len(result.evaluated)}): {_names(result.evaluated)}",
    ]
    if result.ignored:
        lines.append(
            f"model classes ignored, not in the file ({len(result.ignored)}): {_names(result.ignored)}"
        )
    if result.not_evaluated:
        lines.append(f"file categories not evaluated, no model class: {_names(result.not_evaluated)}")
    lines += [
        "",
        f"mAP@[.5:.95]  {result.map:.4f}",
        f"mAP@.5        {result.map50:.4f}",
        f"mAP@.75       {result.map75:.4f}",
        "",
        f"{'class':<16} {'id':>3} {'gt':>5} {'AP':>7} {'AP50':>7}",
    ]
    for row in result.per_class:
        if row.instances or all_classes:
            ap = "-" if math.isnan(row.ap) else f"{row.ap:.4f}"
            ap50 = "-" if math.isnan(row.ap50) else f"{row.ap50:.4f}"
            renamed = f"   (file: {row.category})" if row.category and row.category != row.name else ""
            lines.append(f"{row.name:<16} {row.category_id:>3} {row.instances:>5} {ap:>7} {ap50:>7}{renamed}")
    return "\n".join(lines)


def _names(names: Sequence[str], most: int = 12) -> str:
    shown = ", ".join(names[:most])
    return shown + (f", ... ({len(names) - most} more)" if len(names) > most else "")


def eval_main(
    config: str,
    annotations: str,
    images: str | None,
    params: EvalParams,
    *,
    video: str | None = None,
    decoder: str | None = None,
    overrides: Overrides | None = None,
    class_map: Sequence[str] = (),
    json_out: str | None = None,
) -> int:
    """The ``yolostream eval`` command: evaluate, print the table, optionally write the JSON."""
    from streamer.config import load_config

    cfg = load_config(config)
    result = evaluate(
        cfg, Path(annotations), Path(images) if images else None, params,
        video=Path(video) if video else None, decoder=decoder, overrides=overrides,
        class_map=parse_class_map(class_map),
    )  # fmt: skip
    print(format_table(result))
    if json_out:
        Path(json_out).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"\nwritten: {json_out}")
    return EXIT_OK
