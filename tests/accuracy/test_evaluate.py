"""`yolostream eval`: COCO mAP of the whole pipeline.

The reference figures are those measured when the models were exported (../shared/models/README.md:
ONNX Runtime, letterbox 640, conf 0.001, NMS IoU 0.65, pycocotools); they need ../shared (CI has it).
The category mapping and the empty/degenerate cases run on a fresh clone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.accuracy.eval_classes import ClassMapError, class_mapping, parse_class_map
from streamer.accuracy.evaluate import EvalError, EvalParams, evaluate, format_table
from streamer.cli.main import main
from streamer.coco import COCO_CLASSES
from streamer.config import parse_config
from tests.support.models import write_oracle_model
from tests.support.paths import SHARED, coco_json, shared_model

pytest.importorskip("pycocotools", reason="yolostream eval needs pycocotools (the test extra has it)")

# yolov7's utils.general.coco80_to_coco91_class()
COCO80_TO_91 = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32,
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59,
    60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
]  # fmt: skip


def _config(model: Path, tmp_path: Path, extra: str = "") -> object:
    text = f"model:\n  onnx: {model}\nengine:\n  max_batch: 2\n{extra}sources:\n  - id: x\n    url: x.mp4\n"
    return parse_config(text, base_dir=tmp_path)


def _tinycoco(split: str) -> tuple[Path, Path]:
    ann = coco_json(split)
    return ann, SHARED / "data" / "tinycoco" / "images" / split


def test_coco_names_map_to_the_91_id_scheme() -> None:
    ann = json.loads(coco_json("val2017").read_text())
    mapping = class_mapping(COCO_CLASSES, ann["categories"])
    assert [mapping.category_of[i] for i in range(80)] == COCO80_TO_91
    assert mapping.ignored == () and mapping.not_evaluated == ()


def test_a_subset_of_the_classes_is_matched_by_name_ignoring_case() -> None:
    cats = [{"id": 7, "name": "Car"}, {"id": 3, "name": " PERSON "}, {"id": 9, "name": "forklift"}]
    mapping = class_mapping(COCO_CLASSES, cats)
    assert mapping.category_of == {0: 3, 2: 7}
    assert mapping.evaluated == [(0, 3), (2, 7)]
    assert len(mapping.ignored) == 78 and "bicycle" in mapping.ignored and "person" not in mapping.ignored
    assert mapping.not_evaluated == ("forklift",)


def test_class_map_pairs_other_names() -> None:
    cats = [{"id": 1, "name": "pedestrian"}, {"id": 2, "name": "vehicle"}, {"id": 3, "name": "truck"}]
    pairs = parse_class_map(["person=pedestrian", " car = Vehicle "])
    mapping = class_mapping(COCO_CLASSES, cats, pairs)
    assert mapping.category_of == {0: 1, 2: 2, 7: 3}  # truck still by name


@pytest.mark.parametrize(
    ("names", "cats", "class_map", "message"),
    [
        (("a", "b"), [{"id": 1, "name": "x"}], [], r"no category of ann.json \('x'\) is named like any"),
        (("a", "A"), [{"id": 1, "name": "a"}], [], r"model classes 'a' and 'A' have the same name"),
        (("a",), [{"id": 1, "name": "a"}, {"id": 2, "name": "a "}], [], r"categories of ann.json 'a' and"),
        (("a", "b"), [{"id": 1, "name": "x"}], [("c", "x")], r"the model has no class 'c'"),
        (("a", "b"), [{"id": 1, "name": "x"}], [("a", "y")], r"ann.json has no category 'y' \(it has 'x'\)"),
        (("a", "b"), [{"id": 1, "name": "a"}], [("b", "a")], r"'a' and 'b' both map to the category 'a'"),
    ],
)
def test_class_mapping_errors_name_the_problem(
    names: tuple[str, ...], cats: list[dict[str, object]], class_map: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(ClassMapError, match=message):
        class_mapping(names, cats, class_map, source="ann.json")


def test_class_map_entries_must_have_both_names() -> None:
    with pytest.raises(ClassMapError, match="write MODEL_CLASS=FILE_CATEGORY"):
        parse_class_map(["person"])


def _oracle_dataset(tmp_path: Path) -> tuple[Path, Path, list[tuple[float, float]]]:
    """Three images with a bright disc each, and COCO ground truth: a 40x40 box (in 640 input px) on it."""
    images = tmp_path / "images"
    images.mkdir()
    sizes = [(1280, 720), (480, 640), (101, 51)]
    entries, anns, centres = [], [], []
    for k, (w, h) in enumerate(sizes):
        img = np.full((h, w, 3), 16, np.uint8)
        cx, cy = 0.4 * w + 0.5, 0.6 * h + 0.5
        cv2.circle(img, (int(cx), int(cy)), max(2, min(w, h) // 12), (255, 255, 255), -1)
        cv2.imwrite(str(images / f"{k}.png"), img)
        side = 40 / (640 / max(w, h))  # the oracle's 40 input px in source pixels
        entries.append({"id": k + 1, "file_name": f"{k}.png", "width": w, "height": h})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 0, "area": side * side,
                     "bbox": [int(cx) + 0.5 - side / 2, int(cy) + 0.5 - side / 2, side, side]})  # fmt: skip
        centres.append((cx, cy))
    cats = [{"id": c, "name": n} for c, n in zip(COCO80_TO_91, COCO_CLASSES, strict=True)]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": entries, "annotations": anns, "categories": cats}))
    return ann, images, centres


def test_oracle_pipeline_scores_perfectly(tmp_path: Path) -> None:
    """Boxes that land exactly on the ground truth through letterbox and mapping score AP 1."""
    ann, images, _ = _oracle_dataset(tmp_path)
    cfg = _config(write_oracle_model(tmp_path / "oracle.onnx"), tmp_path)
    result = evaluate(cfg, ann, images)  # type: ignore[arg-type]
    assert result.images == 3 and result.detections == 3 and result.instances == 3
    assert result.map > 0.9 and result.map50 == pytest.approx(1.0)
    person = result.per_class[0]
    assert (person.name, person.category_id, person.instances) == ("person", 1, 3)
    assert all(math.isnan(row.ap) for row in result.per_class[1:])
    table = format_table(result)
    assert table.startswith("engine onnxruntime (OnnxRuntimeEngine) on cpu") and "CPU letterbox" in table
    rows = table.split("AP50\n", 1)[1]
    assert "mAP@[.5:.95]" in table and "person" in rows and "bicycle" not in rows


def test_missing_images_are_refused(tmp_path: Path) -> None:
    ann, images, _ = _oracle_dataset(tmp_path)
    (images / "1.png").unlink()
    cfg = _config(write_oracle_model(tmp_path / "oracle.onnx"), tmp_path)
    with pytest.raises(EvalError, match="1 of the 3 images"):
        evaluate(cfg, ann, images)  # type: ignore[arg-type]


def test_cli_prints_the_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann, images, _ = _oracle_dataset(tmp_path)
    model = write_oracle_model(tmp_path / "oracle.onnx")
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  onnx: {model}\nsources:\n  - id: x\n    url: x.mp4\n")
    out = tmp_path / "r.json"
    assert main(["eval", str(config), "--coco", str(ann), "--images", str(images), "--json", str(out)]) == 0
    assert "mAP@.5        1.0000" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["map50"] == pytest.approx(1.0) and data["params"]["conf"] == 0.001
    assert data["per_class"][1]["ap"] is None  # NaN (no ground truth) is null in JSON


# --- the reference figures (../shared) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "split", "expected"),
    [
        ("yolov5s-coco.onnx", "val2017", 0.315),
        ("yolov7-coco.onnx", "val2017", 0.482),
        pytest.param("yolov7-coco.onnx", "train2017", 0.489, marks=pytest.mark.slow),  # ~30 s
    ],
)
def test_reference_map(model: str, split: str, expected: float, tmp_path: Path) -> None:
    """The whole pipeline reproduces the mAP measured at export, within ±0.005."""
    ann, images = _tinycoco(split)
    cfg = _config(shared_model(model), tmp_path)
    result = evaluate(cfg, ann, images, EvalParams())  # type: ignore[arg-type]
    assert abs(result.map - expected) <= 0.005, format_table(result)
    assert result.map50 > result.map


def test_person_only_labels_reproduce_the_person_ap(tmp_path: Path) -> None:
    """A person-only file (tinycoco's person boxes) with the 80-class yolov7 gives the full file's person
    AP for the same images: the other classes' detections are left out after NMS, as the daemon runs it."""
    ann, images = _tinycoco("val2017")
    data = json.loads(ann.read_text())
    person = [c for c in data["categories"] if c["name"] == "person"]
    person_only = tmp_path / "person.json"
    boxes = [a | {"category_id": 7} for a in data["annotations"] if a["category_id"] == person[0]["id"]]
    person_only.write_text(json.dumps({
        "images": data["images"], "categories": [{"id": 7, "name": "Person"}],  # another case, another id
        "annotations": boxes,
    }))  # fmt: skip
    cfg = _config(shared_model("yolov7-coco.onnx"), tmp_path, "detection:\n  classes: [person]\n")
    full = evaluate(cfg, ann, images)  # type: ignore[arg-type]
    only = evaluate(cfg, person_only, images)  # type: ignore[arg-type]
    full_person = next(row for row in full.per_class if row.name == "person")
    assert only.evaluated == ["person"] and len(only.ignored) == 79 and "car" in only.ignored
    assert [row.name for row in only.per_class] == ["person"] and only.instances == full_person.instances > 0
    assert abs(only.map - full_person.ap) <= 0.002, (only.map, full_person.ap)
    assert abs(only.per_class[0].ap50 - full_person.ap50) <= 0.002
    table = format_table(only)
    assert "classes evaluated (1): person" in table and "model classes ignored, not in the file (79)" in table
