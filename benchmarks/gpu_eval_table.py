"""The table of gpu_session.sh's `eval-gpu` stage: the mAP of each eval run, then fp16 vs fp32 parity.

python benchmarks/gpu_eval_table.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = ("ort-fp32-cpu", "gpu-fp32", "gpu-fp16", "gpu-fp32-cpu-letterbox")


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main() -> None:
    out = Path(sys.argv[1])
    print("\nyolov5s-coco on tinycoco train2017 (32 images), conf 0.001 / NMS IoU 0.65")
    print("run | mAP@[.5:.95] | mAP@.5 | what ran")
    for name in RUNS:
        d = _read(out / f"eval-{name}.json")
        print(
            f"{name} | {d['map']:.4f} | {d['map50']:.4f} | {d['setup']['description']}"
            if d
            else f"{name} | failed"
        )
    for folder in ("parity-fp16-cuda", "parity-fp16"):
        j = _read(out / folder / "summary.json")
        s = j["pairs"][0]["detections"] if j else None
        what = (
            f"{j['verdict']}, matched IoU>=0.9 {s['agreement_0.9']:.2%}, IoU>=0.99 {s['agreement']:.2%}, "
            f"score max|d| {s['score_delta_max']:.4f}, box max|d| {s['box_delta_max']:.2f} px"
            if j and s
            else "failed"
        )
        print(f"{folder} fp16 vs fp32 (serving thresholds): {what}")


if __name__ == "__main__":
    main()
