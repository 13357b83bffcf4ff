"""COCO mAP of the whole deployed pipeline: ``yolostream eval config.yaml --coco ANN.json --images DIR``.

Every image goes through exactly the steps the daemon applies to a decoded frame:

    cv2.imread (BGR) → RGB (the frame rings hold RGB) → the daemon's letterbox and input tensor
    (channel order from ``model.channel_order``) → the configured engine → the daemon's NMS
    → boxes mapped to image pixels with the letterbox geometry

and the detections are scored by pycocotools' COCOeval (bbox): mAP@[.5:.95], mAP@.5 and the AP of each
class. The NMS thresholds of an evaluation are not the serving ones of the config: by default they are
those of yolov7's ``test.py`` (confidence 0.001, IoU 0.65, multi-label, 300 detections per image).

Model class ids are mapped to the annotation file's category ids by name (the config's class names,
COCO's 80 by default, against the file's category names): COCO's 80 classes land on its 91-id scheme
(person 1, ..., toothbrush 90). When the names do not match, a file with exactly as many categories as
the model has classes is mapped in order of category id, as yolov7's ``coco80_to_coco91_class`` does.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from streamer.engine import Engine, EngineOptions, load_engine
from streamer.errors import YolostreamError
from streamer.postprocess import NmsParams, detect_image, to_source_frame
from streamer.preprocess import LetterboxGeometry, letterbox, to_input_tensor

if TYPE_CHECKING:
    from streamer.config import Config

__all__ = [
    "EvalError",
    "EvalParams",
    "EvalResult",
    "category_map",
    "evaluate",
    "format_table",
    "model_path",
    "predict",
    "read_rgb",
]

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


def predict(
    engine: Engine,
    images: Sequence[Path],
    nms: NmsParams,
    *,
    swap_rb: bool = False,
) -> Iterator[tuple[Path, np.ndarray]]:
    """Run `images` through letterbox → `engine` → NMS; yield ``(path, detections)`` in image pixels.

    Detections are ``[K, 6]`` float32 (x1, y1, x2, y2, score, class id), as the daemon publishes them.
    Images are batched up to the engine's largest batch (batch and single results are identical).
    """
    spec = engine.spec
    batch = np.zeros((spec.max_batch, 3, spec.height, spec.width), np.float32)
    canvas = np.empty((spec.height, spec.width, 3), np.uint8)
    pending: list[tuple[Path, LetterboxGeometry]] = []

    def flush() -> Iterator[tuple[Path, np.ndarray]]:
        out = engine.infer(batch[: len(pending)])
        for i, (path, geometry) in enumerate(pending):
            yield path, to_source_frame(detect_image(out[i], nms), geometry)
        pending.clear()

    for path in images:
        _, geometry = letterbox(read_rgb(path), spec.width, spec.height, out=canvas)
        to_input_tensor(canvas, swap_rb=swap_rb, out=batch[len(pending)])
        pending.append((path, geometry))
        if len(pending) == spec.max_batch:
            yield from flush()
    if pending:
        yield from flush()


def model_path(cfg: Config) -> Path:
    """The config's model file: ``model.onnx``, or the named model (fetched and cached on first use)."""
    if cfg.model.onnx is not None:
        return cfg.model.onnx
    from streamer.models.registry import ensure_model

    return ensure_model(cfg.model.name or "")


def category_map(class_names: Sequence[str], categories: Sequence[dict[str, Any]]) -> list[int]:
    """The annotation category id of each model class id (see the module docstring)."""
    by_name = {c["name"]: int(c["id"]) for c in categories}
    if all(name in by_name for name in class_names):
        return [by_name[name] for name in class_names]
    if len(categories) == len(class_names):
        ids = sorted(int(c["id"]) for c in categories)
        log.warning("class names do not match the annotation categories: mapping by category id order")
        return ids
    missing = [n for n in class_names if n not in by_name][:5]
    raise EvalError(
        f"cannot map the model's {len(class_names)} classes to the {len(categories)} categories of the "
        f"annotation file (no category named {', '.join(repr(n) for n in missing)}); "
        "set model.class_names to the annotation file's category names"
    )


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
    images_dir: Path,
    params: EvalParams | None = None,
    *,
    backend: str | None = None,
    engine: Engine | None = None,
) -> EvalResult:
    """COCO bbox evaluation of `cfg`'s model and pipeline on the images of `annotations` in `images_dir`.

    Args:
        cfg: the daemon's config: model, engine backend and device, channel order (not its thresholds).
        annotations: a COCO instances JSON; every image it lists must be in `images_dir`.
        images_dir: the folder of the images (looked up by the JSON's ``file_name``).
        params: the evaluation NMS settings (yolov7 test.py's by default).
        backend: overrides ``cfg.engine.backend``.
        engine: an engine already loaded (then `backend` and the config's engine section are unused).

    Returns:
        The summary statistics and per-class AP.

    Raises:
        EvalError: missing images, classes that cannot be mapped, pycocotools not installed.
    """
    params = params or EvalParams()
    COCO, COCOeval = _coco_api()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
    entries = sorted(gt.imgs.values(), key=lambda im: im["id"])
    paths = [images_dir / im["file_name"] for im in entries]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise EvalError(
            f"{len(missing)} of the {len(paths)} images of {annotations.name} are not in {images_dir} "
            f"(first: {missing[0].name})"
        )
    class_names = cfg.model.effective_class_names
    own_engine = engine is None
    if engine is None:
        from streamer.engine.select import choose_backend

        options = EngineOptions(
            device=cfg.engine.device,
            precision=cfg.engine.precision,
            max_batch=cfg.engine.max_batch,
            threads=cfg.engine.threads,
            input_size=cfg.model.input_size,
        )
        name = choose_backend(backend or cfg.engine.backend, cfg.engine.device)  # `auto` as the daemon does
        engine = load_engine(name, model_path(cfg), options)
    try:
        if engine.spec.num_classes != len(class_names):
            raise EvalError(
                f"the model predicts {engine.spec.num_classes} classes but the config names "
                f"{len(class_names)}; set model.class_names"
            )
        cat_ids = category_map(class_names, list(gt.cats.values()))
        image_id = {p: im["id"] for p, im in zip(paths, entries, strict=True)}
        started = time.monotonic()
        results: list[dict[str, Any]] = []
        swap_rb = cfg.model.channel_order == "bgr"
        for path, dets in predict(engine, paths, params.nms(), swap_rb=swap_rb):
            for x1, y1, x2, y2, score, cls in dets.tolist():
                results.append({
                    "image_id": image_id[path],
                    "category_id": cat_ids[int(cls)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                })  # fmt: skip
        seconds = time.monotonic() - started
    finally:
        if own_engine:
            engine.close()
    return _score(gt, COCOeval, results, [im["id"] for im in entries], class_names, cat_ids, params, seconds)


def _score(
    gt: Any,
    COCOeval: Any,
    results: list[dict[str, Any]],
    image_ids: list[int],
    class_names: Sequence[str],
    cat_ids: list[int],
    params: EvalParams,
    seconds: float,
) -> EvalResult:
    instances = {
        cid: len(gt.getAnnIds(imgIds=image_ids, catIds=[cid], iscrowd=False)) for cid in set(cat_ids)
    }
    if not results:  # COCO.loadRes refuses an empty list: nothing detected scores 0 everywhere
        per_class = [
            ClassAP(
                i, n, c, instances[c], 0.0 if instances[c] else math.nan, 0.0 if instances[c] else math.nan
            )
            for i, (n, c) in enumerate(zip(class_names, cat_ids, strict=True))
        ]
        return EvalResult(0.0, 0.0, 0.0, len(image_ids), 0, sum(instances.values()), per_class, [0.0] * 12,
                          asdict(params), seconds)  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou thresholds, recall, categories, area ranges, max dets]
    column = {cid: k for k, cid in enumerate(ev.params.catIds)}
    per_class = []
    for i, (name, cid) in enumerate(zip(class_names, cat_ids, strict=True)):
        p = precision[:, :, column[cid], 0, -1]
        valid = p[p > -1]
        p50 = p[0][p[0] > -1]
        per_class.append(
            ClassAP(
                i, name, cid, instances[cid],
                float(valid.mean()) if valid.size else math.nan,
                float(p50.mean()) if p50.size else math.nan,
            )
        )  # fmt: skip
    stats = [float(s) for s in ev.stats]
    return EvalResult(
        map=stats[0], map50=stats[1], map75=stats[2], images=len(image_ids), detections=len(results),
        instances=sum(instances.values()), per_class=per_class, stats=stats, params=asdict(params),
        seconds=seconds,
    )  # fmt: skip


def format_table(result: EvalResult, *, all_classes: bool = False) -> str:
    """A plain-text table: the summary, then AP per class (classes with ground truth unless `all_classes`)."""
    p = result.params
    lines = [
        f"images {result.images}   ground-truth boxes {result.instances}   detections {result.detections}   "
        f"(conf {p.get('conf')}, NMS IoU {p.get('iou')}, multi-label {p.get('multi_label')}, "
        f"max {p.get('max_det')} per image; inference {result.seconds:.1f} s)",
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
            lines.append(f"{row.name:<16} {row.category_id:>3} {row.instances:>5} {ap:>7} {ap50:>7}")
    return "\n".join(lines)


def eval_main(
    config: str,
    annotations: str,
    images: str,
    params: EvalParams,
    *,
    backend: str | None = None,
    json_out: str | None = None,
) -> int:
    """The ``yolostream eval`` command: evaluate, print the table, optionally write the JSON."""
    from streamer.config import load_config

    cfg = load_config(config)
    result = evaluate(cfg, Path(annotations), Path(images), params, backend=backend)
    print(format_table(result))
    if json_out:
        Path(json_out).write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"\nwritten: {json_out}")
    return 0
