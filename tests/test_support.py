"""Self-checks of the test helpers: the oracle model and the clip writers do what the other tests assume."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort
import pytest

from streamer.preprocess import letterbox, to_input_tensor
from tests.support import media, paths
from tests.support.models import write_oracle_model

INPUT_W, INPUT_H = 640, 640


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> ort.InferenceSession:
    model = write_oracle_model(
        tmp_path_factory.mktemp("models") / "oracle.onnx", box_size=(40, 30), class_id=3
    )
    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])


def _oracle_centres(session: ort.InferenceSession, frames: list[np.ndarray]) -> list[tuple[float, float]]:
    """Run the oracle on letterboxed `frames` (one batch); return each box centre in source pixels.

    The centre is mapped as a point: `to_source` clips boxes to the frame, which would move the centre of
    a box that sticks out of it.
    """
    batch, geometries = [], []
    for frame in frames:
        boxed, g = letterbox(frame, INPUT_W, INPUT_H)
        batch.append(to_input_tensor(boxed, swap_rb=False))
        geometries.append(g)
    (out,) = session.run(None, {"images": np.stack(batch)})
    assert out.shape == (len(frames), 1, 85)
    centres = []
    for row, g in zip(out[:, 0], geometries, strict=True):
        x, y = g.to_source(np.array([row[0], row[1], row[0], row[1]]))[:2]
        centres.append((float(x), float(y)))
    return centres


@pytest.mark.parametrize("size", [(1920, 1080), (640, 480), (720, 1280), (1366, 768), (333, 999)])
def test_oracle_finds_the_disc_in_source_pixels(oracle: ort.InferenceSession, size: tuple[int, int]) -> None:
    w, h = size
    radius = 8 * max(w, h) / 640  # 8 px of model input
    rng = np.random.default_rng(w * h)
    spots = [(float(rng.uniform(radius + 1, w - radius - 1)), float(rng.uniform(radius + 1, h - radius - 1)))
             for _ in range(6)]  # fmt: skip
    spots[0] = (w / 2, h / 2)
    spots[1] = (radius + 1.25, h - radius - 1.75)  # near a corner, fractional centre
    frames = media.bright_spot_frames(size, spots, radius)
    for i in range(0, len(frames), 2):  # batches of 2: the batch dimension is dynamic
        found = _oracle_centres(oracle, frames[i : i + 2])
        for (x, y), (fx, fy) in zip(spots[i : i + 2], found, strict=True):
            assert abs(fx - x) < 0.5 and abs(fy - y) < 0.5, f"{size}: drawn at {(x, y)}, found {(fx, fy)}"


def test_oracle_row_layout(oracle: ort.InferenceSession) -> None:
    image = np.zeros((1, 3, INPUT_H, INPUT_W), dtype=np.float32)
    image[0, :, 100:103, 200:203] = 1.0  # 3×3 pixels 200..202, 100..102: centre (201.5, 101.5)
    (out,) = oracle.run(None, {"images": image})
    expected = np.zeros(85, dtype=np.float32)
    expected[:5] = (201.5, 101.5, 40, 30, 1.0)
    expected[5 + 3] = 1.0
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-4)
    assert oracle.get_inputs()[0].shape == ["batch", 3, INPUT_H, INPUT_W]
    (blank,) = oracle.run(None, {"images": np.zeros_like(image)})
    assert np.isfinite(blank).all()


def _gradient_frames(w: int, h: int, n: int) -> list[np.ndarray]:
    """Smooth moving colour gradients: compress well, and each frame differs from the others."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i in range(n):
        r = 128 + 100 * np.sin((xx + 4 * i) / 23)
        g = 128 + 100 * np.cos((yy - 3 * i) / 17)
        b = (xx + yy + 8 * i) % 256
        frames.append(np.stack([r, g, b], axis=-1).astype(np.uint8))
    return frames


@pytest.mark.parametrize(
    ("codec", "size", "extra"),
    [
        ("h264", (320, 240), {}),
        ("h264", (1366, 768), {"bframes": 2, "gop": 5}),
        ("hevc", (320, 240), {}),  # x265 ultrafast uses B-frames
        ("mpeg4", (101, 51), {}),
        ("h264", (101, 51), {"pix_fmt": "yuv444p"}),
    ],
)
def test_clip_decodes_back(tmp_path: Path, codec: str, size: tuple[int, int], extra: dict) -> None:
    w, h = size
    frames = _gradient_frames(w, h, 12)
    path = media.write_clip(tmp_path / "clip.mp4", frames, codec=codec, fps=25, **extra)
    decoded = media.decode_frames(path)
    assert len(decoded) == len(frames)
    for i, (src, dec) in enumerate(zip(frames, decoded, strict=True)):
        assert dec.shape == (h, w, 3)
        mad = np.abs(src.astype(np.int16) - dec).mean()
        assert mad < 4, f"frame {i}: mean abs diff {mad:.2f}"
    times = media.decode_timestamps(path)
    assert times == [Fraction(i, 25) for i in range(len(frames))]  # exact: 1/12800 time base


def test_odd_size_in_420_is_refused_clearly(tmp_path: Path) -> None:
    frames = [np.zeros((51, 101, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"101x51.*even"):
        media.write_clip(tmp_path / "odd.mp4", frames, codec="h264")
    with pytest.raises(ValueError, match="no frames"):
        media.write_clip(tmp_path / "empty.mp4", [], codec="h264")


def test_bright_spot_clip_keeps_the_spot(tmp_path: Path) -> None:
    size, radius = (640, 360), 6.0
    spots = [(100.5, 80.0), (320.0, 180.0), (600.25, 300.75), (20.0, 340.0)]
    path = media.bright_spot_clip(tmp_path / "spots.mp4", size, spots, radius, codec="h264")
    decoded = media.decode_frames(path)
    assert len(decoded) == len(spots)
    for (x, y), frame in zip(spots, decoded, strict=True):
        s = frame.astype(np.float32).sum(axis=2)
        assert s.max() > 3 * 230
        weight = np.maximum(s - 0.5 * s.max(), 0)
        ys, xs = np.mgrid[0 : s.shape[0], 0 : s.shape[1]] + 0.5
        cx, cy = (weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()
        assert abs(cx - x) < 0.3 and abs(cy - y) < 0.3
        far = np.hypot(xs - x, ys - y) > radius + 3
        assert np.abs(frame[far].astype(np.int16) - media.BACKGROUND).max() <= 3


def test_oracle_on_decoded_spot_clip(tmp_path: Path, oracle: ort.InferenceSession) -> None:
    size, radius = (1280, 720), 16.0
    spots = [(640.0, 360.0), (101.5, 650.25)]
    path = media.bright_spot_clip(tmp_path / "spots.mkv", size, spots, radius, codec="hevc")
    found = _oracle_centres(oracle, media.decode_frames(path))
    for (x, y), (fx, fy) in zip(spots, found, strict=True):
        assert abs(fx - x) < 0.5 and abs(fy - y) < 0.5


def test_broken_files(tmp_path: Path) -> None:
    with pytest.raises(av.InvalidDataError):
        av.open(str(media.corrupt_file(tmp_path / "garbage.mp4"))).close()

    frames = _gradient_frames(160, 120, 20)
    plain = media.write_clip(tmp_path / "plain.mp4", frames)
    with pytest.raises(av.InvalidDataError):
        media.decode_frames(media.truncated_clip(plain, tmp_path / "plain_cut.mp4", 0.5))

    fast = media.write_clip(tmp_path / "fast.mp4", frames, faststart=True)
    cut = media.truncated_clip(fast, tmp_path / "fast_cut.mp4", 0.5)
    got = 0
    with pytest.raises(av.InvalidDataError), av.open(str(cut)) as container:
        for _ in container.decode(video=0):
            got += 1
    assert 0 < got < len(frames)

    mkv = media.write_clip(tmp_path / "clip.mkv", frames)
    assert 0 < len(media.decode_frames(media.truncated_clip(mkv, tmp_path / "cut.mkv", 0.5))) < len(frames)


def test_tinycoco_clip(tmp_path: Path) -> None:
    images = paths.tinycoco_images("val2017")[:2]
    clip = media.tinycoco_clip(tmp_path / "coco.mp4", images, size=(640, 480), hold=2, codec="h264")
    assert clip.frame_count == 4 and len(clip.pictures) == 2
    decoded = media.decode_frames(clip.path)
    assert len(decoded) == clip.frame_count
    for i, frame in enumerate(decoded):
        picture = clip.pictures[clip.picture_index(i)]
        assert frame.shape == picture.shape == (480, 640, 3)
        assert np.abs(frame.astype(np.int16) - picture).mean() < 8  # real detail: ~5.5 at crf 18
    truth = paths.tinycoco_annotations("val2017")
    assert all(gt.class_id in range(80) for gt in truth[images[0].name])


def test_missing_shared_data_skips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(paths, "SHARED", tmp_path / "nowhere")
    with pytest.raises(pytest.skip.Exception, match=r"\.\./shared/models/nope\.onnx not found"):
        paths.shared_model("nope.onnx")
    with pytest.raises(pytest.skip.Exception, match="a fresh clone has no"):
        paths.tinycoco_images()
    with pytest.raises(pytest.skip.Exception, match=r"instances_val2017\.json not found"):
        paths.tinycoco_annotations()
