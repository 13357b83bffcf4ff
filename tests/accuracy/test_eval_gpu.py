"""On a CUDA GPU: `yolostream eval` through the daemon's GPU path, boxes exactly where they belong.

The oracle model (a box on the bright spot) runs in the torch device engine and the CUDA executor; the
images are letterboxed by the CPU (`--preprocess cpu`) or, converted to NV12, by the daemon's CUDA kernel
(`--preprocess cuda`, odd sizes included). Both must score AP 1. Skipped without a GPU (the GPU host
runs them in `benchmarks/gpu_session.sh eval-gpu`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from streamer.accuracy.eval_pipeline import Overrides
from streamer.accuracy.evaluate import evaluate, format_table
from streamer.coco import COCO_CLASSES
from streamer.config import parse_config
from tests.support.cuda import cuda_torch_or_skip
from tests.support.models import write_oracle_model

pytestmark = pytest.mark.gpu
pytest.importorskip("pycocotools", reason="yolostream eval needs pycocotools (the test extra has it)")


@pytest.fixture(scope="module")
def torch() -> Any:
    return cuda_torch_or_skip()


def _spot_images(tmp_path: Path) -> tuple[Path, Path]:
    """Bright discs on dark images of several sizes (two odd), COCO boxes of the oracle's 40 input px."""
    images = tmp_path / "images"
    images.mkdir()
    entries, anns = [], []
    for k, (w, h) in enumerate([(1280, 720), (480, 640), (101, 51), (333, 211)]):
        img = np.full((h, w, 3), 16, np.uint8)
        cx, cy = 0.4 * w + 0.5, 0.6 * h + 0.5
        cv2.circle(img, (int(cx), int(cy)), max(2, min(w, h) // 12), (255, 255, 255), -1)
        cv2.imwrite(str(images / f"{k}.png"), img)
        side = 40 / (640 / max(w, h))
        entries.append({"id": k + 1, "file_name": f"{k}.png", "width": w, "height": h})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 0, "area": side * side,
                     "bbox": [int(cx) + 0.5 - side / 2, int(cy) + 0.5 - side / 2, side, side]})  # fmt: skip
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": entries, "annotations": anns,
                               "categories": [{"id": 1, "name": COCO_CLASSES[0]}]}))  # fmt: skip
    return ann, images


@pytest.mark.parametrize("preprocess", ["cpu", "cuda"])
def test_oracle_scores_perfectly_through_the_gpu_path(torch: Any, tmp_path: Path, preprocess: str) -> None:
    ann, images = _spot_images(tmp_path)
    model = write_oracle_model(tmp_path / "oracle.onnx", threshold=0.6)  # (NV12 dims the spot a little)
    text = (
        f"model:\n  onnx: {model}\nengine:\n  backend: torch\n  device: cuda\n  max_batch: 2\n"
        "  compile: 'off'\nsources:\n  - id: x\n    url: x.mp4\n"
    )
    cfg = parse_config(text, base_dir=tmp_path)
    result = evaluate(cfg, ann, images, overrides=Overrides(preprocess=preprocess))
    setup = result.setup
    assert (setup["backend"], setup["executor"], setup["preprocess"]) == ("torch", "CudaExecutor", preprocess)
    assert setup["device"].startswith("cuda:0") and setup["gpu_filter"]
    assert result.detections == 4 and result.map50 == pytest.approx(1.0), format_table(result)
    assert result.map > 0.9
