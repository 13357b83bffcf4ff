"""`yolostream eval --video`: a labelled clip, decoded by the daemon's own source, scored like images.

Fresh-clone tests use the oracle model on clips of bright spots written here with PyAV (H.264); the
real-model test encodes tinycoco's 640x480 images (../shared) and compares with the image-based figure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamer.accuracy.eval_video import VideoError, frame_indices, frame_of
from streamer.accuracy.evaluate import evaluate, format_table, read_rgb
from streamer.cli.main import main
from streamer.coco import COCO_CLASSES
from streamer.config import parse_config
from tests.support.media import bright_spot_clip, write_clip
from tests.support.models import write_oracle_model
from tests.support.paths import SHARED, coco_json, shared_model

pytest.importorskip("pycocotools", reason="yolostream eval needs pycocotools (the test extra has it)")

SIZE = (320, 240)
BOX = 40 / (640 / 320)  # the oracle's 40 input px, in source pixels of a 320-wide frame
CATEGORIES = [{"id": i + 1, "name": n} for i, n in enumerate(COCO_CLASSES)]


def _config(model: Path, tmp_path: Path) -> Any:
    text = (
        f"model:\n  onnx: {model}\nengine:\n  max_batch: 2\n"
        "sources:\n  - id: x\n    url: x.mp4\n    decoder: cpu\n"
    )
    return parse_config(text, base_dir=tmp_path)


def _spots(n: int) -> list[tuple[float, float]]:
    return [(60.5 + 20 * k, 80.5 + 10 * k) for k in range(n)]


def _spot_annotations(frames: dict[int, tuple[float, float]], entry: Any) -> dict[str, Any]:
    """A COCO file with a BOX-sized person box on the spot of each listed frame (entry(k) → image)."""
    images, anns = [], []
    for n, (k, (cx, cy)) in enumerate(sorted(frames.items()), start=1):
        images.append({"id": n, "width": SIZE[0], "height": SIZE[1], **entry(k)})
        anns.append({"id": n, "image_id": n, "category_id": 1, "iscrowd": 0, "area": BOX * BOX,
                     "bbox": [cx - BOX / 2, cy - BOX / 2, BOX, BOX]})  # fmt: skip
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


def test_frame_of_reads_the_index_field_or_the_number_of_the_name() -> None:
    assert frame_of({"file_name": "frame_000123.PNG"}) == 123
    assert frame_of({"file_name": "video/img-12.jpg"}) == 12
    assert frame_of({"file_name": "frame_000123.PNG", "frame_index": 7}) == 7
    assert frame_of({"file_name": "x.jpg", "frame": 0}) == 0
    assert frame_of({"file_name": "cover.jpg"}) is None


def test_frame_indices_refuse_unnamed_and_duplicate_frames() -> None:
    with pytest.raises(VideoError, match=r"ann.json: image 2 \('cover.jpg'\) names no frame"):
        frame_indices(
            [{"id": 1, "file_name": "frame_1.png"}, {"id": 2, "file_name": "cover.jpg"}], "ann.json"
        )
    with pytest.raises(VideoError, match="are both frame 4"):
        entries = [{"id": 1, "file_name": "frame_4.png"}, {"id": 2, "file_name": "a.png", "frame_index": 4}]
        frame_indices(entries, "ann.json")


@pytest.mark.parametrize(
    "entry",
    [
        lambda k: {"file_name": f"frame_{k:06d}.PNG"},  # CVAT's COCO export
        lambda k: {"file_name": f"shot{k}.jpg", "frame_index": k},  # an explicit index
    ],
)
def test_labelled_frames_of_a_clip_score_perfectly(tmp_path: Path, entry: Any) -> None:
    """Only frames 1, 3, 4 and 6 of a 7-frame clip are labelled: the others are decoded and skipped."""
    spots = _spots(7)
    clip = bright_spot_clip(tmp_path / "clip.mp4", SIZE, spots, radius=8, crf=10)
    labelled = {k: spots[k] for k in (1, 3, 4, 6)}
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(_spot_annotations(labelled, entry)))
    cfg = _config(write_oracle_model(tmp_path / "oracle.onnx"), tmp_path)
    result = evaluate(cfg, ann, video=clip)
    assert (result.images, result.detections, result.instances) == (4, 4, 4), format_table(result)
    assert result.map50 == pytest.approx(1.0) and result.map > 0.9
    assert result.source == "video clip.mp4, decoded by the daemon's cpu source"


def test_a_misplaced_box_is_found_wrong(tmp_path: Path) -> None:
    """The frames are really matched by index: labels shifted by one frame miss every box."""
    spots = _spots(4)
    clip = bright_spot_clip(tmp_path / "clip.mp4", SIZE, spots, radius=8, crf=10)
    shifted = {k + 1: spots[k] for k in range(3)}  # frame k+1 labelled with frame k's spot
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(_spot_annotations(shifted, lambda k: {"file_name": f"frame_{k:06d}.png"})))
    result = evaluate(_config(write_oracle_model(tmp_path / "oracle.onnx"), tmp_path), ann, video=clip)
    assert result.map50 == 0.0


def test_clip_errors_name_the_frame(tmp_path: Path) -> None:
    spots = _spots(3)
    clip = bright_spot_clip(tmp_path / "clip.mp4", SIZE, spots, radius=8)
    cfg = _config(write_oracle_model(tmp_path / "oracle.onnx"), tmp_path)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(_spot_annotations({5: spots[0]}, lambda k: {"file_name": f"frame_{k}.png"})))
    with pytest.raises(VideoError, match=r"lists frame 5 but clip.mp4 has 3 frame\(s\)"):
        evaluate(cfg, ann, video=clip)
    data = _spot_annotations({1: spots[1]}, lambda k: {"file_name": f"frame_{k}.png"})
    data["images"][0]["width"] = 640
    ann.write_text(json.dumps(data))
    with pytest.raises(
        VideoError, match=r"frame 1 of clip.mp4 is 320x240 but its image entry 1 .* is 640x240"
    ):
        evaluate(cfg, ann, video=clip)


def test_cli_evaluates_a_clip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spots = _spots(2)
    clip = bright_spot_clip(tmp_path / "clip.mp4", SIZE, spots, radius=8, crf=10)
    ann = tmp_path / "ann.json"
    ann.write_text(
        json.dumps(_spot_annotations(dict(enumerate(spots)), lambda k: {"file_name": f"f_{k}.png"}))
    )
    model = write_oracle_model(tmp_path / "oracle.onnx")
    config = tmp_path / "c.yaml"
    config.write_text(f"model:\n  onnx: {model}\nsources:\n  - id: x\n    url: x.mp4\n")
    assert main(["eval", str(config), "--coco", str(ann), "--video", str(clip), "--decoder", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "frames: video clip.mp4, decoded by the daemon's cpu source" in out
    assert "mAP@.5        1.0000" in out


# --- real photographs (../shared) ----------------------------------------------------------------------


def test_labelled_clip_matches_the_images(tmp_path: Path) -> None:
    """tinycoco's 640x480 images, 3 frames each, H.264 at a high bitrate: the clip's mAP is within 0.02
    of the images' (compression, the decoder and its colour conversion are what differs)."""
    model = shared_model("yolov5s-coco.onnx")
    data = json.loads(coco_json("train2017").read_text())
    images = sorted((im for im in data["images"] if (im["width"], im["height"]) == (640, 480)),
                    key=lambda im: im["file_name"])  # fmt: skip
    assert len(images) >= 6
    folder = SHARED / "data" / "tinycoco" / "images" / "train2017"
    by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in images}
    for a in data["annotations"]:
        if a["image_id"] in by_image:
            by_image[a["image_id"]].append(a)
    subset = tmp_path / "images.json"
    kept = [a for im in images for a in by_image[im["id"]]]
    subset.write_text(json.dumps({"images": images, "annotations": kept, "categories": data["categories"]}))
    hold = 3
    frames, anns = [], []
    for k in range(len(images) * hold):
        im = images[k // hold]
        frames.append({"id": k + 1, "file_name": f"frame_{k:06d}.PNG", "width": 640, "height": 480})
        anns += [a | {"id": len(anns) + 1 + n, "image_id": k + 1} for n, a in enumerate(by_image[im["id"]])]
    labelled = tmp_path / "clip.json"
    labelled.write_text(json.dumps({"images": frames, "annotations": anns, "categories": data["categories"]}))
    pictures = [read_rgb(folder / im["file_name"]) for im in images]
    clip = write_clip(tmp_path / "clip.mp4", (p for p in pictures for _ in range(hold)), crf=4)
    cfg = _config(model, tmp_path)
    by_images = evaluate(cfg, subset, folder)
    by_video = evaluate(cfg, labelled, video=clip)
    assert by_video.images == len(images) * hold and by_video.instances == by_images.instances * hold
    assert abs(by_video.map - by_images.map) <= 0.02, (by_images.map, by_video.map, format_table(by_video))
    assert by_images.map > 0.2  # a real figure, not two empty evaluations
    print(f"mAP images {by_images.map:.4f}, clip {by_video.map:.4f}")
