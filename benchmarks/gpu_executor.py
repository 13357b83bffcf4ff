"""The CUDA executor on the GPU host: overlap timeline, 1 vs 2 slots, engine-only ceiling, torch parity.

    python benchmarks/gpu_executor.py --model skeleton --batch 16 --batches 40 --out $OUT
    python benchmarks/gpu_executor.py --parity benchmarks/.cache/yolov5s-coco.onnx \
        --images benchmarks/.cache/img

- ceiling: the engine alone, one stream, inputs already on the GPU, batch after batch;
- executor: what the inference loop does per batch: the CPU writes the letterboxed batch into the slot's
  pinned buffer, submits (copy in → engine → copy out on the slot's stream), and runs NMS on each
  finished batch while the GPU works on the next; with 1 slot nothing overlaps;
- timeline: per batch, CUDA-event times of copy-in / inference / copy-out and the CPU's NMS, in ms;
- parity: torch fp32 on CUDA vs ONNX Runtime fp32 on the CPU, same preprocessed images.
`--model skeleton` is YOLOv7 with random weights (benchmarks/skeleton.py): the real graph's cost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from streamer.engine.base import EngineOptions
from streamer.engine.cuda_executor import CudaExecutor, DeviceArray, check, cudart
from streamer.engine.torch_device import TorchDeviceEngine
from streamer.postprocess.nms import NmsParams, box_iou, detect_image


def random_yolov7(out: Path) -> Path:
    import onnx
    from skeleton import fill

    skeleton = Path(__file__).resolve().parent / ".cache" / "yolov7.skeleton.onnx"
    onnx.save(fill(onnx.load(str(skeleton))), str(out))
    return out


def ceiling(engine: TorchDeviceEngine, batch: int, batches: int) -> float:
    spec = engine.spec
    x = DeviceArray((batch, 3, spec.height, spec.width), np.float32)
    y = DeviceArray((batch, spec.boxes, spec.outputs_per_box), np.float32)
    stream = check(cudart.cudaStreamCreate(), "stream")
    ctx = engine.new_context()
    for _ in range(3):
        engine.enqueue(ctx, batch, x.ptr, {"output": y.ptr}, int(stream))
    check(cudart.cudaStreamSynchronize(stream), "sync")
    start = time.perf_counter()
    for _ in range(batches):
        engine.enqueue(ctx, batch, x.ptr, {"output": y.ptr}, int(stream))
    check(cudart.cudaStreamSynchronize(stream), "sync")
    elapsed = time.perf_counter() - start
    x.close()
    y.close()
    return batch * batches / elapsed


def run_executor(engine: TorchDeviceEngine, slots: int, batch: int, batches: int) -> tuple[float, list[dict]]:
    """The inference loop's pattern; returns images/s and the timeline of every batch."""
    spec = engine.spec
    frames = np.random.default_rng(0).random((batch, 3, spec.height, spec.width), dtype=np.float32)
    params = NmsParams()
    ex = CudaExecutor(engine, slots=slots)
    ex.timeline = []
    nms_times: list[tuple[float, float]] = []
    submitted = finished = 0
    start = 0.0
    while finished < batches + 2:
        if submitted < batches + 2 and (slot := ex.free_slot()) is not None:
            np.copyto(ex.buffers[slot][:batch], frames)  # stands for letterboxing into the pinned buffer
            ex.submit(slot, list(range(batch)))
            submitted += 1
            continue
        result = ex.done(timeout=None)
        if result is None:
            continue
        _, outputs = result
        t0 = time.perf_counter()
        for i in range(batch):
            detect_image(outputs["output"][i], params)
        nms_times.append((t0, time.perf_counter()))
        finished += 1
        if finished == 2:  # the first two batches warm up
            start = time.perf_counter()
    elapsed = time.perf_counter() - start
    timeline = ex.timeline
    for entry, (n0, n1) in zip(timeline, nms_times, strict=True):
        entry["nms_start"], entry["nms_end"] = n0, n1
    ex.close()
    return batch * batches / elapsed, timeline


def print_timeline(timeline: list[dict], first: int = 2, count: int = 6) -> None:
    t0 = timeline[first]["submitted"]
    print("batch | slot | copy-in ms | infer ms (start-end) | copy-out end | CPU NMS (start-end)")
    for k, e in enumerate(timeline[first : first + count], start=first):
        ms = {key: (e[key] - t0) * 1e3 for key in e if key not in ("slot", "size")}
        print(
            f"{k:5} | {e['slot']:4} | {ms['copy_in']:7.1f}-{ms['infer_start']:6.1f} | "
            f"{ms['infer_start']:7.1f}-{ms['infer_end']:7.1f} | {ms['copy_out_end']:7.1f} | "
            f"{ms['nms_start']:7.1f}-{ms['nms_end']:7.1f}"
        )
    overlaps = sum(
        1
        for a, b in zip(timeline[first:], timeline[first + 1 :], strict=False)
        if b["infer_start"] < a["nms_end"] and b["infer_end"] > a["nms_start"]
    )
    print(
        f"batches whose inference ran while the CPU did NMS of the previous batch: "
        f"{overlaps} of {len(timeline) - first - 1}"
    )


def parity(model: Path, images: Path, count: int) -> None:
    import cv2
    import onnxruntime as ort

    from streamer.engine.torch import TorchEngine
    from streamer.preprocess import letterbox, to_input_tensor

    paths = sorted(images.glob("*.jpg"))[:count]
    batch = np.stack(
        [to_input_tensor(letterbox(cv2.imread(str(p)), 640, 640)[0], swap_rb=True) for p in paths]
    )
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"images": batch})[0]
    torch_engine = TorchEngine(model, EngineOptions(device="cuda", max_batch=len(paths)))
    got = torch_engine.infer(batch)
    params = NmsParams()
    matched = matched99 = total = only_a = only_b = 0
    for a_out, b_out in zip(ref, got, strict=True):
        a, b = detect_image(a_out, params), detect_image(b_out, params)
        total += len(a)
        if len(a) and len(b):
            iou = box_iou(a[:, :4], b[:, :4]) * (a[:, 5:6] == b[None, :, 5])
            best = iou.max(axis=1)
            matched += int((best >= 0.5).sum())
            matched99 += int((best >= 0.99).sum())
        only_a += max(0, len(a) - len(b))
        only_b += max(0, len(b) - len(a))
    print(
        f"\nparity torch fp32 (CUDA, TF32 off) vs ONNX Runtime fp32 (CPU), {model.name}, {len(paths)} images:"
    )
    d = np.abs(ref - got)
    print(
        f"raw output max |d| {d.max():.3g} (boxes {d[..., :4].max():.3g} px, scores {d[..., 4:].max():.3g})"
    )
    print(
        f"detections {total}: matched at IoU>=0.5 {matched}, at IoU>=0.99 {matched99} "
        f"({100 * matched99 / max(total, 1):.2f} %); count difference +{only_b}/-{only_a}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="skeleton")
    parser.add_argument("--batch", type=int, nargs="+", default=[16])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--parity", type=Path, help="ONNX model for the torch vs onnxruntime parity check")
    parser.add_argument("--images", type=Path)
    args = parser.parse_args()
    import torch

    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    if args.parity:
        parity(args.parity, args.images, count=6)
    model = random_yolov7(Path("/tmp/yolov7-random.onnx")) if args.model == "skeleton" else Path(args.model)
    rows, timelines = [], {}
    for batch in args.batch:
        engine = TorchDeviceEngine(model, EngineOptions(device="cuda", max_batch=batch))
        for mode in ("eager", "CUDA graph"):
            engine.cuda_graph = mode == "CUDA graph"
            base = ceiling(engine, batch, args.batches)
            rows.append((f"batch {batch}, {mode}: engine only (1 stream, inputs on GPU)", base, base))
            for slots in (1, 2):
                rate, timelines[f"batch {batch}, {mode}, {slots} slots"] = run_executor(
                    engine, slots, batch, args.batches
                )
                rows.append(
                    (f"batch {batch}, {mode}: executor, {slots} slot(s), CPU staging + NMS", rate, base)
                )
        engine.close()
    for name, timeline in timelines.items():
        if "2 slots" not in name:
            continue
        print(f"\ntimeline ({name}):")
        print_timeline(timeline)
    print(f"\nYOLOv7 ({args.model}) fp32, {args.batches} batches per run, TF32 off")
    print("| run | images/s | vs engine only |\n|---|---:|---:|")
    for name, rate, base in rows:
        print(f"| {name} | {rate:.1f} | {rate / base:.2f} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "timeline.json").write_text(json.dumps(timelines))


if __name__ == "__main__":
    main()
