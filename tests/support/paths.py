"""Where the shared test data lives, and skips with a clear reason when it does not.

``../shared`` (next to the repository root) holds the real models and the labelled images. A fresh clone
has no ``../shared``: tests that need it skip; CI has it, so there they run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = REPO_ROOT.parent / "shared"

_WHY = "(a fresh clone has no ../shared); CI has it"


def shared_model(name: str) -> Path:
    """Path of ``../shared/models/<name>``; skips the calling test when the file is absent."""
    path = SHARED / "models" / name
    if not path.is_file():
        pytest.skip(f"real model ../shared/models/{name} not found {_WHY}")
    return path


def tinycoco_images(split: str = "val2017") -> list[Path]:
    """The tinycoco images of `split` (``"val2017"``: 6 images, ``"train2017"``: 32), sorted by name.

    Skips the calling test when ``../shared/data/tinycoco/images/<split>`` is absent or empty.
    """
    folder = _tinycoco() / "images" / split
    images = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if not images:
        pytest.skip(f"labelled images ../shared/data/tinycoco/images/{split} not found {_WHY}")
    return images


@dataclass(frozen=True)
class GroundTruth:
    """One COCO annotation, in the image's own pixels."""

    class_id: int
    """Model class index 0..79 (COCO's category ids 1..90 mapped through the sorted category list)."""
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 (COCO's x, y, w, h converted)."""
    iscrowd: bool


def tinycoco_annotations(split: str = "val2017") -> dict[str, list[GroundTruth]]:
    """Ground truth of `split` keyed by image file name (e.g. ``"000000471345.jpg"``).

    Every image of the split has an entry (empty list when it has no annotation). Skips the calling test
    when the annotation file is absent. Note that ``instances_train2017.json`` holds val2017 images too.
    """
    path = _tinycoco() / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        pytest.skip(f"annotations ../shared/data/tinycoco/annotations/{path.name} not found {_WHY}")
    return {name: list(gts) for name, gts in _load_annotations(path).items()}


def coco_json(split: str = "val2017") -> Path:
    """Path of the raw COCO annotation JSON of `split` (for pycocotools-style evaluation); skips if absent."""
    path = _tinycoco() / "annotations" / f"instances_{split}.json"
    if not path.is_file():
        pytest.skip(f"annotations ../shared/data/tinycoco/annotations/{path.name} not found {_WHY}")
    return path


def _tinycoco() -> Path:
    return SHARED / "data" / "tinycoco"  # looked up at call time: tests may point SHARED elsewhere


@lru_cache(maxsize=4)
def _load_annotations(path: Path) -> dict[str, list[GroundTruth]]:
    data = json.loads(path.read_text())
    class_of = {c["id"]: i for i, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    name_of = {im["id"]: im["file_name"] for im in data["images"]}
    out: dict[str, list[GroundTruth]] = {name: [] for name in name_of.values()}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        out[name_of[ann["image_id"]]].append(
            GroundTruth(class_of[ann["category_id"]], (x, y, x + w, y + h), bool(ann.get("iscrowd", 0)))
        )
    return out
