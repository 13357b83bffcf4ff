"""The GPU engines' detections against ONNX Runtime fp32, on real weights and real photographs.

    python benchmarks/gpu_accuracy.py --model benchmarks/.cache/yolov5s-coco.onnx \
        --images benchmarks/.cache/tinycoco --out $OUT

Every image is letterboxed on the CPU (the reference path), then run (a) by ONNX Runtime fp32 on the CPU,
the reference, and (b) by each GPU variant through the daemon's own path: `TorchDeviceEngine` in the
`CudaExecutor`, NMS's first step on the GPU (`streamer.engine.candidates`), the rest of NMS on the CPU,
batches of 16, 16, 4 and 2 (the last two run at batch size 4, padded). Detections (conf 0.25, IoU 0.45)
are matched one-to-one per class by IoU (`streamer.accuracy.parity_compare.match_detections`); printed per
variant: reference detections, matched at IoU >= 0.9 and >= 0.99, detections only one side has, and over
the matched pairs the largest box-coordinate and score differences.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streamer.accuracy.parity_compare import match_detections
from streamer.engine.base import EngineOptions
from streamer.postprocess.nms import NmsParams, detect_image
from streamer.preprocess import letterbox, to_input_tensor

BATCHES = (16, 16, 4, 2)
VARIANTS = {
    "fp16, compiled": {"precision": "fp16", "compile": "on"},
    "fp16, eager": {"precision": "fp16", "compile": "off"},
    "fp32, eager": {"precision": "fp32", "compile": "off"},
}


def load_images(folder: Path, size: int = 640) -> np.ndarray:
    import cv2

    paths = sorted(folder.rglob("*.jpg"))
    if not paths:
        raise SystemExit(f"no .jpg under {folder}")
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]
    return np.stack([to_input_tensor(letterbox(im, size, size)[0], swap_rb=False) for im in images])


def reference(model: Path, x: np.ndarray, params: NmsParams) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [detect_image(session.run(None, {name: x[i : i + 1]})[0][0], params) for i in range(len(x))]


def run_variant(
    model: Path, x: np.ndarray, params: NmsParams, precision: str, compile: str
) -> list[np.ndarray]:
    from streamer.engine.cuda_executor import CudaExecutor
    from streamer.engine.torch_device import TorchDeviceEngine

    options = EngineOptions(device="cuda", max_batch=16, precision=precision)
    engine = TorchDeviceEngine(model, options, compile=compile, sizes=(4,))
    executor = CudaExecutor(engine, slots=2, conf=params.conf_thres, owns_engine=True)
    found: list[np.ndarray] = []
    try:
        start = 0
        for n in BATCHES:
            n = min(n, len(x) - start)
            if n <= 0:
                break
            slot = executor.free_slot()
            if slot is None:
                raise RuntimeError("no free slot")
            executor.host_input(slot)[:n] = x[start : start + n]
            executor.submit(slot, list(range(n)))
            done = executor.done(timeout=60)
            if done is None:
                raise RuntimeError("no batch finished within 60 s")
            _, outputs = done
            found += [detect_image(outputs.grid_rows(i), params) for i in range(n)]
            start += n
    finally:
        executor.close()
    return found


def compare(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    total = matched9 = matched99 = only_ref = only_got = 0
    box_d = score_d = 0.0
    for a, b in zip(ref, got, strict=True):
        pairs = match_detections(a, b, min_iou=0.5)
        total += len(a)
        matched9 += sum(iou >= 0.9 for _, _, iou in pairs)
        matched99 += sum(iou >= 0.99 for _, _, iou in pairs)
        only_ref += len(a) - len(pairs)
        only_got += len(b) - len(pairs)
        for i, j, _ in pairs:
            box_d = max(box_d, float(np.abs(a[i, :4] - b[j, :4]).max()))
            score_d = max(score_d, float(abs(a[i, 4] - b[j, 4])))
    return {
        "reference": total, "matched_0.9": matched9, "matched_0.99": matched99,
        "only_reference": only_ref, "only_variant": only_got, "box_max_abs": box_d, "score_max_abs": score_d,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import torch

    params = NmsParams(conf_thres=0.25, iou_thres=0.45)
    x = load_images(args.images)
    started = time.perf_counter()
    ref = reference(args.model, x, params)
    print(
        f"reference: ONNX Runtime fp32 on the CPU, {len(x)} images, {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    rows = {}
    for name in args.variants:
        started = time.perf_counter()
        rows[name] = compare(ref, run_variant(args.model, x, params, **VARIANTS[name]))
        rows[name]["seconds"] = time.perf_counter() - started
        print(name, json.dumps(rows[name]), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_accuracy.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{args.model.name} on {len(x)} images ({args.images}), conf 0.25 / IoU 0.45, "
          f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}; "
          "vs ONNX Runtime fp32 (CPU)")  # fmt: skip
    print("variant | reference dets | matched IoU>=0.9 | IoU>=0.99 | only ref / only variant | "
          "box max|d| px | score max|d|")  # fmt: skip
    for name, r in rows.items():
        n = max(1, r["reference"])
        print(f"{name} | {r['reference']} | {r['matched_0.9']} ({100 * r['matched_0.9'] / n:.1f} %) | "
              f"{r['matched_0.99']} ({100 * r['matched_0.99'] / n:.1f} %) | {r['only_reference']} / "
              f"{r['only_variant']} | {r['box_max_abs']:.3f} | {r['score_max_abs']:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
