"""The NumPy model of the CUDA letterbox kernel against PyAV's rgb24 and the CPU reference letterbox."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from streamer.preprocess.letterbox import letterbox, letterbox_geometry, to_input_tensor
from streamer.preprocess.nv12 import (
    YuvCoefficients,
    letterbox_nv12,
    matrix_of,
    nv12_to_rgb,
    resize_taps,
)
from tests.support.nv12clips import (
    CODECS,
    SIZES,
    content_frames,
    decode_nv12,
    delta_histogram,
    reference_input,
    write_tagged_clip,
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[tuple[int, int], str], Path]:
    folder = tmp_path_factory.mktemp("nv12")
    out = {}
    for size in SIZES:
        frames, _ = content_frames(size, count=1 if size[0] * size[1] > 1920 * 1088 else 2)
        for codec in CODECS:
            out[(size, codec)] = write_tagged_clip(folder / f"{codec}_{size[0]}x{size[1]}.mkv", frames, codec)
    return out


def test_coefficients_are_swscales() -> None:
    """The int16 values swscale's ff_yuv2rgb_c_init_tables computes (BT.601 limited: the default)."""
    c = YuvCoefficients.for_stream()
    assert c.as_tuple() == (9539, 128, 13075, 16525, -3209, -6660)
    assert YuvCoefficients.for_stream("bt709").as_tuple() == (9539, 128, 14686, 17305, -1747, -4366)
    assert YuvCoefficients.for_stream("bt601", full_range=True).as_tuple()[:2] == (8192, 0)
    assert YuvCoefficients.for_frame(2, 0) == c  # untagged: BT.601 limited, as FFmpeg assumes
    assert [matrix_of(code) for code in (None, 0, 1, 5, 6, 9)] == ["bt601", "bt601", "bt709"] + [
        "bt601"
    ] * 2 + ["bt2020"]
    with pytest.raises(ValueError, match="unknown colour matrix"):
        YuvCoefficients.for_stream("bt2100")


@pytest.mark.parametrize(
    ("colorspace", "color_range"),
    [(None, None), (1, 1), (1, 2), (5, 2), (6, 1), (4, 1), (7, 1), (9, 1)],
    ids=["untagged", "bt709", "bt709-full", "bt601-full", "smpte170m", "fcc", "smpte240m", "bt2020"],
)
def test_colour_conversion_is_bit_exact_with_pyav(
    tmp_path: Path, colorspace: int | None, color_range: int | None
) -> None:
    """swscale's chroma replication and fixed-point arithmetic, reproduced to the last bit."""
    frames, _ = content_frames((320, 240), count=1)
    clip = write_tagged_clip(tmp_path / "tagged.mkv", frames, "h264", colorspace, color_range)
    (f,) = decode_nv12(clip)
    assert (f.colorspace, f.color_range) == (colorspace or 2, color_range or 0)
    assert np.array_equal(nv12_to_rgb(f.y, f.uv, f.width, f.height, f.coefficients), f.rgb)


def test_a_float_conversion_would_miss_the_criterion(clips: dict) -> None:
    """Why the model copies swscale: BT.601 in floating point is 1.2 levels brighter on average."""
    f = decode_nv12(clips[((1280, 720), "h264")], limit=1)[0]
    y = f.y.astype(np.float64)
    uv = np.repeat(np.repeat(f.uv, 2, 0), 2, 1)[: f.height, : f.width].astype(np.float64) - 128
    yl = (y - 16) * 255 / 219
    r = yl + 1.402 * 255 / 224 * uv[..., 1]
    g = yl - (0.344136 * uv[..., 0] + 0.714136 * uv[..., 1]) * 255 / 224
    b = yl + 1.772 * 255 / 224 * uv[..., 0]
    ideal = np.clip(np.rint(np.stack([r, g, b], -1)), 0, 255)
    bias = float(np.mean(ideal - f.rgb))
    assert 0.9 < bias < 1.5


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_model_meets_the_accuracy_criterion(clips: dict, size: tuple[int, int], codec: str) -> None:
    """≥ 99.9 % of values within 1/255 of the CPU reference and none more than 2/255 away."""
    for f in decode_nv12(clips[(size, codec)]):
        model, g = letterbox_nv12(f.y, f.uv, f.width, f.height, 640, 640, f.coefficients)
        assert g == letterbox_geometry(f.width, f.height, 640, 640)
        stats = delta_histogram(model, reference_input(f.rgb))
        print(size, codec, stats)
        assert stats["within_1"] >= 0.999 and stats["max"] <= 2, stats
        # In fact only the reference's final uint8 rounding (and cv2's 11-bit weights) remain:
        assert stats["max"] < 1, stats


def test_resize_taps_are_cv2s() -> None:
    """Applied to a float32 image, the taps give cv2.resize's INTER_LINEAR (float weights, no rounding)."""
    rng = np.random.default_rng(1)
    for (sw, sh), (dw, dh) in [((1366, 768), (640, 360)), ((720, 1280), (360, 640)), ((101, 51), (640, 323))]:
        img = rng.random((sh, sw), dtype=np.float32) * 255
        xi0, xi1, xw0, xw1 = resize_taps(sw, dw)
        yi0, yi1, yw0, yw1 = resize_taps(sh, dh)
        h = img[:, xi0] * xw0 + img[:, xi1] * xw1
        ours = h[yi0] * yw0[:, None] + h[yi1] * yw1[:, None]
        # along one axis, exactly cv2's coordinates and weights
        assert np.array_equal(cv2.resize(img[:1], (dw, 1), interpolation=cv2.INTER_LINEAR)[0], h[0])
        column = cv2.resize(img[:, :1], (1, dh), interpolation=cv2.INTER_LINEAR)[:, 0]
        assert np.array_equal(column, img[yi0, 0] * yw0 + img[yi1, 0] * yw1)
        # in 2-D cv2's float path (IPP) sums in another order: equal to float32 rounding of the sums
        theirs = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_LINEAR)
        assert np.abs(ours - theirs).max() < 0.02


def test_odd_sizes_bgr_and_fp16() -> None:
    """Odd width and height (chroma of the last column/row is sample (W - 1) // 2), BGR order, float16."""
    rng = np.random.default_rng(2)
    w, h = 101, 51
    y = rng.integers(16, 236, (h, w), dtype=np.uint8)
    uv = rng.integers(16, 241, ((h + 1) // 2, (w + 1) // 2, 2), dtype=np.uint8)
    c = YuvCoefficients.for_stream("bt709")
    rgb = nv12_to_rgb(y, uv, w, h, c)
    assert rgb.shape == (h, w, 3)
    assert np.array_equal(rgb[-1, -1], nv12_to_rgb(y[-1:, -1:], uv[-1:, -1:], 1, 1, c)[0, 0])
    ref = to_input_tensor(letterbox(rgb, 320, 256)[0], swap_rb=True)
    bgr, _ = letterbox_nv12(y, uv, w, h, 320, 256, c, swap_rb=True)
    assert delta_histogram(bgr, ref)["max"] < 1
    half, _ = letterbox_nv12(y, uv, w, h, 320, 256, c, swap_rb=True, dtype=np.float16)
    assert half.dtype == np.float16 and np.array_equal(half, bgr.astype(np.float16))
    # a pitched luma plane and a flat (H2 x pitch) chroma plane read the same
    pitched = np.zeros((h, 128), np.uint8)
    pitched[:, :w] = y
    flat = np.zeros((uv.shape[0], 128), np.uint8)
    flat[:, : uv.shape[1] * 2] = uv.reshape(uv.shape[0], -1)
    again, _ = letterbox_nv12(pitched, flat, w, h, 320, 256, c, swap_rb=True)
    assert np.array_equal(again, bgr)
