"""Our NumPy NMS against yolov7's torch/torchvision NMS on ≥ 1000 random and real output tensors.

For the GPU test host (PyTorch and torchvision are there; a CPU-only torch with a CUDA torchvision, as on
the build machines, cannot import torchvision). Every case is run through

- ``streamer.postprocess.nms.non_max_suppression`` (NumPy, float32), and
- `yolov7_nms` below: yolov7's ``utils.general.non_max_suppression`` semantics written with torch ops and
  ``torchvision.ops.nms``, on the CPU and, when there is one, on the GPU,

in every mode: multi-label and best-class, per-class and agnostic, at the evaluation thresholds
(confidence 0.001, NMS IoU 0.65) and the serving ones (0.25, 0.45). Results must be identical: same
boxes, scores and classes, in the same order. Two known exceptions are counted apart: exact score ties
(torch's sort is not stable, ours is) and single-class models (``--nc1`` says which rule yolov7
applies: its current HEAD scores a one-class model by objectness alone, older commits by class ×
objectness like every other model).

Cases: random outputs (clustered boxes so that NMS has work to do, 1, 2 and 80 classes) and, with
``--model`` (default ../shared/models/yolov5s-coco.onnx when present), real outputs of the model on the
images of ``--images`` plus jittered copies of them (scores and boxes perturbed).

Usage: python benchmarks/nms_vs_torchvision.py [--cases 800] [--real 250] [--model M.onnx --images DIR]
                                               [--nc1 product]
Prints a table; exit code 1 when a case differs for any other reason than a known exception.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from streamer.postprocess.nms import NmsParams, non_max_suppression

SHARED = Path(__file__).resolve().parents[2] / "shared"
MAX_WH = 4096.0


def yolov7_nms(pred, conf, iou, *, agnostic, multi_label, max_det=300, max_nms=30000, nc1="objectness"):  # type: ignore[no-untyped-def]
    """yolov7's non_max_suppression (no a-priori labels, no merge) on a torch tensor [B, N, 5 + nc]."""
    import torch
    import torchvision

    nc = pred.shape[2] - 5
    multi_label = multi_label and nc > 1
    out = []
    for x in pred:
        x = x[x[:, 4] > conf].clone()
        if x.shape[0] == 0:
            out.append(torch.zeros((0, 6), device=pred.device))
            continue
        if nc == 1 and nc1 == "objectness":
            x[:, 5:] = x[:, 4:5]
        else:
            x[:, 5:] *= x[:, 4:5]
        box = torch.empty_like(x[:, :4])
        box[:, 0] = x[:, 0] - x[:, 2] / 2
        box[:, 1] = x[:, 1] - x[:, 3] / 2
        box[:, 2] = x[:, 0] + x[:, 2] / 2
        box[:, 3] = x[:, 1] + x[:, 3] / 2
        if multi_label:
            i, j = (x[:, 5:] > conf).nonzero(as_tuple=False).T
            x = torch.cat((box[i], x[i, j + 5, None], j[:, None].float()), 1)
        else:
            best, j = x[:, 5:].max(1, keepdim=True)
            x = torch.cat((box, best, j.float()), 1)[best.view(-1) > conf]
        if x.shape[0] == 0:
            out.append(torch.zeros((0, 6), device=pred.device))
            continue
        if x.shape[0] > max_nms:
            x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        offsets = x[:, 5:6] * (0 if agnostic else MAX_WH)
        keep = torchvision.ops.nms(x[:, :4] + offsets, x[:, 4], iou)[:max_det]
        out.append(x[keep])
    return out


# --- cases ---------------------------------------------------------------------------------------------


def random_case(rng: np.random.Generator, nc: int) -> np.ndarray:
    """[1, N, 5 + nc] float32: boxes in clusters (overlaps), sigmoid-like scores, sizes 1..300 px.

    Up to 3000 rows with few classes, 800 with 80 (multi-label at conf 0.001 then still gives ~10^4
    candidates: torchvision's CPU NMS is quadratic in them)."""
    n = int(rng.integers(1, 3000 if nc < 80 else 800))
    centres = rng.uniform(0, 640, (max(1, n // 20), 2))
    k = rng.integers(0, len(centres), n)
    xy = centres[k] + rng.normal(0, rng.uniform(0.5, 20), (n, 2))
    wh = rng.uniform(1, 300, (n, 2)) if rng.random() < 0.5 else np.abs(rng.normal(40, 30, (n, 2))) + 1
    obj = rng.beta(0.3, 2, (n, 1))
    cls = rng.beta(0.3, 2, (n, nc))
    return np.concatenate([xy, wh, obj, cls], 1).astype(np.float32)[None]


def real_cases(model: Path, images: Path, limit: int) -> list[np.ndarray]:
    import cv2
    import onnxruntime as ort

    from streamer.preprocess import letterbox, to_input_tensor

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = []
    for path in sorted(images.glob("*.jpg"))[:limit]:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        x = to_input_tensor(letterbox(rgb, 640, 640)[0], swap_rb=False)[None]
        out.append(session.run(None, {name: x})[0].astype(np.float32))
    return out


def jitter(rng: np.random.Generator, pred: np.ndarray) -> np.ndarray:
    p = pred.copy()
    p[..., :4] += rng.normal(0, rng.uniform(0.01, 2), p[..., :4].shape).astype(np.float32)
    p[..., 4:] = np.clip(p[..., 4:] * rng.uniform(0.5, 1.5, p[..., 4:].shape), 0, 1).astype(np.float32)
    return p


def has_ties(pred: np.ndarray, conf: float) -> bool:
    scores = (pred[0, :, 5:] * pred[0, :, 4:5])[pred[0, :, 4] > np.float32(conf)].ravel()
    scores = scores[scores > np.float32(conf)]
    return np.unique(scores).size != scores.size


# --- run -----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=800, help="random cases [800]")
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "yolov5s-coco.onnx")
    parser.add_argument("--images", type=Path, default=SHARED / "data" / "tinycoco" / "images" / "val2017")
    parser.add_argument("--real", type=int, default=250, help="jittered copies of each real output [250]")
    parser.add_argument("--nc1", choices=["objectness", "product"], default="objectness",
                        help="yolov7's single-class score rule (HEAD: objectness)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    import torchvision

    rng = np.random.default_rng(args.seed)
    cases: list[tuple[str, np.ndarray]] = []
    for k in range(args.cases):
        nc = (1, 2, 80)[k % 3]
        cases.append((f"random nc={nc}", random_case(rng, nc)))
    if args.model.is_file() and args.images.is_dir():
        for pred in real_cases(args.model, args.images, limit=8):
            cases.append(("real", pred))
            cases += [("real jittered", jitter(rng, pred)) for _ in range(args.real // 8)]
    else:
        print(f"(no real cases: {args.model} or {args.images} not found)")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    thresholds = ((0.001, 0.65), (0.25, 0.45))  # evaluation, serving
    modes = [(m, a, c, i) for m, a, (c, i) in itertools.product((True, False), (False, True), thresholds)]
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}; {len(cases)} cases x "
          f"{len(modes)} modes x {devices}")  # fmt: skip

    tally: Counter[tuple[str, str, str]] = Counter()
    examples: list[str] = []
    started = time.monotonic()
    for (kind, pred), (multi, agnostic, conf, iou), device in itertools.product(cases, modes, devices):
        mode = (
            f"{'multi' if multi else 'best '} {'agnostic' if agnostic else 'per-cls '} conf {conf} iou {iou}"
        )
        params = NmsParams(conf_thres=conf, iou_thres=iou, agnostic=agnostic, multi_label=multi)
        ours = non_max_suppression(pred, params)[0]
        tensor = torch.from_numpy(pred).to(device)
        theirs = yolov7_nms(tensor, conf, iou, agnostic=agnostic, multi_label=multi, nc1=args.nc1)[0]
        theirs = theirs.cpu().numpy()
        group = kind.split(" nc=")[0] if "nc=1" not in kind else "random nc=1"
        if ours.shape == theirs.shape and np.array_equal(ours, theirs):
            tally[(device, group, "identical")] += 1
        elif has_ties(pred, conf):
            tally[(device, group, "differs: exact score ties")] += 1
        elif pred.shape[2] == 6 and args.nc1 == "objectness":
            tally[(device, group, "differs: nc=1 score rule")] += 1
        else:
            tally[(device, group, "DIFFERS")] += 1
            if len(examples) < 5:
                examples.append(f"{device} {kind} {mode}: ours {ours.shape}, yolov7 {theirs.shape}")

    print(f"\n{'device':6} {'cases':14} {'outcome':28} {'count':>7}")
    for (device, group, outcome), count in sorted(tally.items()):
        print(f"{device:6} {group:14} {outcome:28} {count:>7}")
    print(f"\n{sum(tally.values())} comparisons in {time.monotonic() - started:.0f} s")
    for line in examples:
        print("example:", line)
    return 1 if any(outcome == "DIFFERS" for _, _, outcome in tally) else 0


if __name__ == "__main__":
    sys.exit(main())
