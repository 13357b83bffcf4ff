"""`yolostream parity`: comparisons, verdicts, planted defects caught and named.

Fresh-clone tests use models written here (the oracle, a small conv chain); the real-model tests use
YOLOv5s from ../shared (fast on a CPU) and skip without it; the torch ones skip without PyTorch.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.accuracy.parity import Thresholds, match_detections, read_frames, run_parity
from streamer.accuracy.parity_backends import ParityError, parse_backends
from streamer.accuracy.parity_compare import FrameDiff, PairResult, ParityResult
from streamer.accuracy.parity_report import format_summary, notes_for
from streamer.accuracy.parity_stages import PREPROCESSORS, diagnose_input, first_divergence
from streamer.cli.main import main
from streamer.config import parse_config
from streamer.postprocess.nms import NmsParams
from streamer.preprocess import letterbox_geometry
from tests.support.defects import bn_eps_factors, chain_model, perturb_conv
from tests.support.media import write_clip
from tests.support.models import write_oracle_model
from tests.support.paths import shared_model, tinycoco_images


def _config(model: Path, tmp_path: Path, extra: str = "") -> object:
    text = f"model:\n  onnx: {model}\n{extra}sources:\n  - id: x\n    url: x.mp4\n"
    return parse_config(text, base_dir=tmp_path)


def _spot_frames(n: int = 4) -> list[tuple[str, np.ndarray]]:
    """Dark frames of several shapes with one bright disc (the oracle model's input)."""
    rng = np.random.default_rng(3)
    frames = []
    for k, (w, h) in enumerate([(1280, 720), (480, 640), (333, 211), (640, 640)][:n]):
        img = np.empty((h, w, 3), np.uint8)
        img[...] = (16, 24, 32)  # coloured, so that swapping R and B changes the input
        centre = (int(rng.uniform(0.3, 0.7) * w), int(rng.uniform(0.3, 0.7) * h))
        cv2.circle(img, centre, 12, (255, 230, 200), -1)
        frames.append((f"spot{k}", img))
    return frames


# --- parsing and matching ------------------------------------------------------------------------------


def test_parse_backends(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    specs = parse_backends("onnxruntime, torch ,onnxruntime:other.onnx,onnxruntime@pad128", model, tmp_path)
    assert [(s.backend, s.model, s.preprocess) for s in specs] == [
        ("onnxruntime", model, "reference"),
        ("torch", model, "reference"),
        ("onnxruntime", tmp_path / "other.onnx", "reference"),
        ("onnxruntime", model, "pad128"),
    ]
    assert specs[2].label == "onnxruntime:other.onnx"
    for bad, message in [
        ("onnxruntime", "at least two"),
        ("onnxruntime,onnxruntime", "named twice"),
        ("onnxruntime,onnxruntime@nope", "unknown preprocessing"),
        ("onnx runtime,torch", "cannot read"),
    ]:
        with pytest.raises(ParityError, match=message):
            parse_backends(bad, model)


def test_parse_backends_reads_precision_and_compile(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    specs = parse_backends(
        "torch/fp32/eager,torch/fp16/compiled:sub/m.onnx@pad128,torch/fp16", model, tmp_path
    )
    assert [(s.backend, s.precision, s.compile, s.model, s.preprocess) for s in specs] == [
        ("torch", "fp32", "off", model, "reference"),
        ("torch", "fp16", "on", tmp_path / "sub" / "m.onnx", "pad128"),
        ("torch", "fp16", None, model, "reference"),
    ]
    assert specs[1].overrides().precision == "fp16" and specs[1].overrides().compile == "on"
    with pytest.raises(ParityError, match="unknown option 'fp8'"):
        parse_backends("torch,torch/fp8", model)


def _shifted_pair(shift: float, score: float, precisions: tuple[str, str]) -> PairResult:
    """100 detections; the candidate's boxes moved by `shift` px and scores by `score`."""
    a = np.array([[10 * k, 0, 10 * k + 50, 50, 0.9, 0] for k in range(100)], np.float32)
    b = a.copy()
    b[:, 0] += shift
    b[:, 4] -= score
    pair = PairResult("torch/fp32", "torch/fp16", precisions=precisions)
    pair.frames.append(FrameDiff("f", a, b, match_detections(a, b)))
    return pair


def test_precision_pairs_are_judged_at_iou_0_9_and_said_so() -> None:
    """fp16-sized differences (boxes 1 px off: IoU 0.98) fail an fp32 pair but pass an fp16 one, whose
    report names precision as the cause; a larger shift fails both."""
    t = Thresholds()
    same = _shifted_pair(1.0, 0.02, ("fp32", "fp32"))
    assert same.agreement == 0.0 and same.agreement_90 == 1.0
    assert any("IoU ≥ 0.99" in f for f in same.failures(t))
    fp16 = _shifted_pair(1.0, 0.02, ("fp32", "fp16"))
    assert fp16.failures(t) == []
    assert fp16.box_deltas().max() == pytest.approx(1.0) and fp16.matched_90 == 100
    result = ParityResult([fp16], [], t, 1, NmsParams())
    notes = notes_for(result)
    assert any(
        "computes in fp16, torch/fp32 in fp32" in n and "rounding of the lower precision" in n for n in notes
    )
    far = _shifted_pair(8.0, 0.02, ("fp32", "fp16"))  # IoU 0.84: below 0.9
    assert any("IoU ≥ 0.9: 0.00% < 99.00% (fp16 vs fp32)" in f for f in far.failures(t))
    loud = _shifted_pair(1.0, 0.2, ("fp32", "fp16"))
    assert any("score difference up to 0.2000 > 0.05 (fp16 vs fp32)" in f for f in loud.failures(t))


def test_match_detections_is_one_to_one_by_class_and_iou() -> None:
    a = np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1], [50, 50, 60, 60, 0.7, 2]], np.float32)
    b = np.array([[0, 0, 10, 11, 0.9, 0], [0, 0, 10, 10, 0.5, 0], [20, 20, 30, 30, 0.8, 3]], np.float32)
    pairs = match_detections(a, b)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]  # the exact box wins; class 1 vs 3 never match
    assert pairs[0][2] == pytest.approx(1.0)
    assert match_detections(a, b[:0]) == []


def test_diagnose_input_names_each_known_defect() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    ref, g = PREPROCESSORS["reference"](rgb, 640, 640, False)
    assert diagnose_input(ref, ref.copy(), g) is None
    for name, words in [("pad128", "padding value"), ("topleft", "placement"), ("swaprb", "colour order")]:
        cand, _ = PREPROCESSORS[name](rgb, 640, 640, False)
        assert words in (diagnose_input(ref, cand, g) or ""), name
    assert letterbox_geometry(500, 300, 640, 640).top == 128


# --- fresh clone: the oracle and the conv chain ---------------------------------------------------------


def test_identical_models_pass_and_write_a_report(tmp_path: Path) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx")
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(model.read_bytes())
    cfg = _config(model, tmp_path)
    specs = parse_backends(f"onnxruntime,onnxruntime:{copy}", model)
    result = run_parity(cfg, _spot_frames(), specs, stages=True, out_dir=tmp_path / "out")  # type: ignore[arg-type]
    assert result.passed, result.pairs[0].failures(result.thresholds)
    pair = result.pairs[0]
    assert pair.raw.max_abs == 0 and pair.agreement == 1.0 and pair.detections_a == 4
    assert pair.layers is not None and pair.layers.first is None and pair.layers.compared
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# Parity report: PASS")
    assert "engine onnxruntime (OnnxRuntimeEngine) on cpu" in report and "CpuExecutor" in report
    summary = format_summary(result)
    assert "at IoU>=0.9 4 (100.00%)" in summary and "box max|d| 0 px" in summary
    assert (tmp_path / "out" / "score_delta_hist.png").stat().st_size > 1000
    assert not (tmp_path / "out" / "frames").exists()  # no disagreeing frame, no picture


@pytest.mark.parametrize(
    ("pre", "cause"),
    [("pad128", "padding value"), ("topleft", "placement"), ("swaprb", "colour order")],
)
def test_preprocessing_defect_is_caught_by_the_stage(tmp_path: Path, pre: str, cause: str) -> None:
    """The oracle finds the spot whatever the padding, placement or colours, so the detections agree;
    the preprocessing stage still fails and names the cause."""
    # (threshold 0.6: a pad of 128 is more than half as bright as the spot, 3 x 128 > 0.5 x 3 x 255)
    model = write_oracle_model(tmp_path / "oracle.onnx", threshold=0.6)
    cfg = _config(model, tmp_path)
    specs = parse_backends(f"onnxruntime,onnxruntime@{pre}", model)
    plain = run_parity(cfg, _spot_frames(), specs)  # type: ignore[arg-type]
    assert plain.pairs[0].agreement == 1.0
    staged = run_parity(cfg, _spot_frames(), specs, stages=True)  # type: ignore[arg-type]
    assert not staged.passed
    failures = staged.pairs[0].failures(staged.thresholds)
    assert any("preprocessing differs" in f and cause in f for f in failures), failures


def test_the_nvdec_path_letterbox_is_a_backend_preprocessing(tmp_path: Path) -> None:
    """``@cuda``: the image as NV12 through the kernel's arithmetic (its NumPy model on a CPU engine);
    the oracle still finds every spot, and the report says why the inputs differ."""
    # (threshold 0.6: NV12 dims the disc by ~1 %, and half of it would be the padding's 3 x 114 levels)
    model = write_oracle_model(tmp_path / "oracle.onnx", threshold=0.6)
    specs = parse_backends("onnxruntime,onnxruntime@cuda", model)
    assert specs[1].overrides().preprocess == "auto" and specs[0].overrides().preprocess == "cpu"
    result = run_parity(_config(model, tmp_path), _spot_frames(), specs, stages=True)  # type: ignore[arg-type]
    pair = result.pairs[0]
    assert pair.detections_a == pair.detections_b == 4 and pair.agreement_90 == 1.0
    assert pair.inputs is not None and pair.inputs.max_levels > 1  # chroma at half resolution
    assert any("letterboxes as the daemon does NVDEC frames" in n for n in result.notes)


def test_layer_stage_names_the_perturbed_conv(tmp_path: Path) -> None:
    model = chain_model(tmp_path / "chain.onnx", layers=6)
    bad, _ = perturb_conv(model, tmp_path / "bad.onnx", "conv3")
    batch = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    report = first_divergence(model, bad, batch)
    assert report.first is not None and report.first.node == "conv3"
    assert [d.node for d in report.compared[:-1]] == [
        "conv0", "sig0", "act0", "conv1", "sig1", "act1", "conv2", "sig2", "act2",
    ]  # fmt: skip
    assert all(d.max_abs == 0 for d in report.compared[:-1])
    assert report.weights is not None and "BatchNorm eps" in report.weights
    lo, hi = bn_eps_factors(8).min(), bn_eps_factors(8).max()
    assert f"{lo:.4f}..{hi:.4f}" in report.weights
    assert first_divergence(model, model, batch).first is None


def test_cli_fails_and_names_the_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end through the command: exit 1, the layer in the summary, report and pictures written."""
    model = chain_model(tmp_path / "chain.onnx", layers=4, size=64)
    bad, node = perturb_conv(model, tmp_path / "bad.onnx", "conv2")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(2)
    for k in range(3):
        cv2.imwrite(str(images / f"{k}.png"), rng.integers(0, 255, (48 + 8 * k, 64, 3), dtype=np.uint8))
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model:\n  onnx: {model}\n  class_names: [a, b, c]\ndetection:\n  confidence: 0.05\n"
        "sources:\n  - id: x\n    url: x.mp4\n"
    )
    out = tmp_path / "report"
    argv = ["parity", str(config), "--images", str(images), "--backends", f"onnxruntime,onnxruntime:{bad}"]
    assert main([*argv, "--stages", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert f"first divergence at {node} (Conv)" in printed and "verdict: FAIL" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "FAIL"
    assert summary["pairs"][0]["first_diverging_layer"]["node"] == node
    assert f"First diverging node: `{node}`" in (out / "report.md").read_text()


def test_cli_passes_on_a_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = write_oracle_model(tmp_path / "oracle.onnx")
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(model.read_bytes())
    frames = [f for _, f in _spot_frames(1)] * 3
    clip = write_clip(tmp_path / "clip.mp4", frames)
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  onnx: {model}\nsources:\n  - id: x\n    url: x.mp4\n")
    argv = ["parity", str(config), "--video", str(clip), "--backends", "onnxruntime,onnxruntime:copy.onnx"]
    out = tmp_path / "o"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # relative model paths of --backends are relative to the current directory
    try:
        assert main([*argv, "--max-frames", "2", "--out", str(out)]) == 0
    finally:
        os.chdir(cwd)
    assert "verdict: PASS" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["frames"] == 2


def test_read_frames_refuses_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ParityError, match="no images"):
        list(read_frames(tmp_path))


# --- real models (../shared) ----------------------------------------------------------------------------


def test_bn_eps_defect_in_yolov5s_is_caught(tmp_path: Path) -> None:
    """A wrong-eps scale on one mid-network conv: the detections disagree and --stages names the conv."""
    model = shared_model("yolov5s-coco.onnx")
    images = tinycoco_images("val2017")
    bad, node = perturb_conv(model, tmp_path / "bad.onnx")
    cfg = _config(model, tmp_path, "engine:\n  threads: 2\n")
    specs = parse_backends(f"onnxruntime,onnxruntime:{bad}", model)
    frames = read_frames(images[0].parent, max_frames=4)
    result = run_parity(cfg, frames, specs, stages=True, out_dir=tmp_path / "out")  # type: ignore[arg-type]
    assert not result.passed
    pair = result.pairs[0]
    assert pair.layers is not None and pair.layers.first is not None
    assert pair.layers.first.node == node
    assert pair.agreement < 0.999  # visible in the detections too, not only in the layers
    assert list((tmp_path / "out" / "frames").glob("*.jpg"))


def test_torch_matches_onnxruntime_on_yolov5s(tmp_path: Path) -> None:
    """ORT CPU vs torch CPU fp32 on real images: ≥ 99.9 % of detections matched at IoU ≥ 0.99."""
    pytest.importorskip("torch")
    if importlib.util.find_spec("onnx2torch") is None:  # (importing it may need the engine's torchvision fix)
        pytest.skip("onnx2torch is not installed (the parity extra has it)")
    model = shared_model("yolov5s-coco.onnx")
    images = tinycoco_images("val2017")
    cfg = _config(model, tmp_path, "engine:\n  threads: 2\n")
    specs = parse_backends("onnxruntime,torch", model)
    result = run_parity(cfg, read_frames(images[0].parent), specs, out_dir=tmp_path / "out")  # type: ignore[arg-type]
    pair = result.pairs[0]
    assert result.passed, pair.failures(Thresholds())
    assert pair.agreement >= 0.999 and pair.detections_a > 50
    assert pair.raw.max_abs < 0.05 and pair.raw.cosine > 0.999999
