"""`streamer.preprocess.letterbox` against a transliteration of yolov7's `utils.datasets.letterbox`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from streamer.preprocess.letterbox import (
    PAD_VALUE,
    LetterboxGeometry,
    letterbox,
    letterbox_geometry,
    to_input_tensor,
)


def yolov7_letterbox(
    img: np.ndarray,
    new_shape: int | tuple[int, int] = (640, 640),
    color: tuple[int, int, int] = (114, 114, 114),
    auto: bool = False,
    scaleFill: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """yolov7's letterbox as written upstream; returns the image, (top, bottom, left, right), new_unpad."""
    shape = img.shape[:2]  # current shape [height, width]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)

    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)

    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # noqa: RUF046 (as upstream)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]  # wh padding
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scaleFill:
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])

    dw /= 2  # divide padding into 2 sides
    dh /= 2

    if shape[::-1] != new_unpad:  # resize
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))  # noqa: RUF046
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))  # noqa: RUF046
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return img, (top, bottom, left, right), new_unpad


SQUARE_SIZES = [
    (1920, 1080),
    (1280, 720),
    (640, 480),
    (1366, 768),
    (720, 1280),  # portrait
    (100, 50),  # upscaled
    (641, 479),
    (3840, 2160),
    (1, 1000),
    (640, 640),  # no resize, no padding
]
# Non-square destination 640×384 (w×h), as a rectangular engine input would use.
RECT_SIZES = [(1920, 1080), (1280, 720), (640, 480), (720, 1280), (641, 479)]
CASES = [(w, h, 640, 640) for w, h in SQUARE_SIZES] + [(w, h, 640, 384) for w, h in RECT_SIZES]


def random_image(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("src_w", "src_h", "dst_w", "dst_h"), CASES)
def test_matches_yolov7_byte_for_byte(src_w: int, src_h: int, dst_w: int, dst_h: int) -> None:
    image = random_image(src_w, src_h)
    expected, (top, bottom, left, right), new_unpad = yolov7_letterbox(image, (dst_h, dst_w))

    got, g = letterbox(image, dst_w, dst_h)

    assert got.shape == expected.shape == (dst_h, dst_w, 3)
    assert got.dtype == np.uint8
    assert np.array_equal(got, expected)
    assert (g.top, g.bottom, g.left, g.right) == (top, bottom, left, right)
    assert (g.new_w, g.new_h) == new_unpad
    assert (g.src_w, g.src_h, g.dst_w, g.dst_h) == (src_w, src_h, dst_w, dst_h)
    assert g.ratio == min(dst_h / src_h, dst_w / src_w)
    assert g == letterbox_geometry(src_w, src_h, dst_w, dst_h)


def test_odd_padding_puts_the_extra_row_at_the_bottom() -> None:
    g = letterbox_geometry(100, 33, 640, 640)  # r = 6.4: 640 × 211, 429 rows of padding
    assert (g.new_w, g.new_h) == (640, 211)
    assert (g.top, g.bottom) == (214, 215)
    assert (g.left, g.right) == (0, 0)


@pytest.mark.parametrize(("src_w", "src_h", "dst_w", "dst_h"), [(1280, 720, 640, 640), (640, 480, 640, 384)])
def test_out_buffer_is_written_in_place_and_stale_content_overwritten(
    src_w: int, src_h: int, dst_w: int, dst_h: int
) -> None:
    image = random_image(src_w, src_h, seed=1)
    expected, _ = letterbox(image, dst_w, dst_h)
    for stale_value in (0, 255):
        buf = np.full((dst_h, dst_w, 3), stale_value, dtype=np.uint8)
        got, _ = letterbox(image, dst_w, dst_h, out=buf)
        assert got is buf
        assert np.array_equal(buf, expected)
    # Random garbage everywhere, padding included.
    buf = random_image(dst_w, dst_h, seed=2)
    letterbox(image, dst_w, dst_h, out=buf)
    assert np.array_equal(buf, expected)


def test_out_buffer_can_be_a_view_of_a_batch() -> None:
    batch = np.full((2, 640, 640, 3), 7, dtype=np.uint8)
    a, b = random_image(1280, 720, seed=3), random_image(720, 1280, seed=4)
    letterbox(a, 640, 640, out=batch[0])
    letterbox(b, 640, 640, out=batch[1])
    assert np.array_equal(batch[0], yolov7_letterbox(a, 640)[0])
    assert np.array_equal(batch[1], yolov7_letterbox(b, 640)[0])


def test_padding_value() -> None:
    got, g = letterbox(np.zeros((720, 1280, 3), dtype=np.uint8), 640, 640)
    assert (g.top, g.bottom) == (140, 140)
    assert np.all(got[: g.top] == PAD_VALUE)
    assert np.all(got[g.top + g.new_h :] == PAD_VALUE)
    assert np.all(got[g.top : g.top + g.new_h] == 0)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), dtype=np.uint8),
        np.zeros((10, 10, 4), dtype=np.uint8),
        np.zeros((10, 10, 3), dtype=np.float32),
    ],
)
def test_rejects_images_that_are_not_hxwx3_uint8(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        letterbox(image, 640, 640)


def test_rejects_empty_frame_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        letterbox_geometry(0, 480, 640, 640)


# --- to_input_tensor --------------------------------------------------------------------------------


@pytest.mark.parametrize("swap_rb", [False, True])
def test_to_input_tensor(swap_rb: bool) -> None:
    image = random_image(64, 48, seed=5)
    got = to_input_tensor(image, swap_rb=swap_rb)
    assert got.shape == (3, 48, 64)
    assert got.dtype == np.float32
    # yolov7: img[:, :, ::-1].transpose(2, 0, 1) (BGR→RGB, HWC→CHW), then .float() / 255.0 in float32
    src = image[:, :, ::-1] if swap_rb else image
    expected = np.ascontiguousarray(src.transpose(2, 0, 1)).astype(np.float32) / np.float32(255.0)
    assert np.array_equal(got, expected)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_to_input_tensor_swap_rb_reverses_channels() -> None:
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 255  # B, G, R as cv2 reads them
    rgb = to_input_tensor(image, swap_rb=True)
    assert rgb[0, 0, 0] == 1.0  # R first
    assert rgb[1, 0, 0] == np.float32(20) / np.float32(255)
    assert rgb[2, 0, 0] == np.float32(10) / np.float32(255)


def test_to_input_tensor_writes_into_a_batch_buffer() -> None:
    batch = np.full((2, 3, 48, 64), -1.0, dtype=np.float32)
    image = random_image(64, 48, seed=6)
    got = to_input_tensor(image, swap_rb=True, out=batch[1])
    assert np.shares_memory(got, batch)
    assert np.array_equal(batch[1], to_input_tensor(image, swap_rb=True))
    assert np.all(batch[0] == -1.0)


# --- geometry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src_w", "src_h", "dst_w", "dst_h"), CASES)
def test_geometry_round_trip(src_w: int, src_h: int, dst_w: int, dst_h: int) -> None:
    g = letterbox_geometry(src_w, src_h, dst_w, dst_h)
    rng = np.random.default_rng(7)
    xy1 = rng.uniform(0, 1, (50, 2)) * (src_w, src_h)
    xy2 = xy1 + rng.uniform(0, 1, (50, 2)) * ((src_w, src_h) - xy1)
    boxes = np.concatenate([xy1, xy2], axis=1).astype(np.float32)

    inp = g.to_input(boxes)
    assert inp.dtype == np.float32
    # Inside the resized area of the input...
    assert np.all(inp[:, 0::2] >= g.left - 1e-3) and np.all(inp[:, 0::2] <= g.left + g.new_w + 1e-3)
    assert np.all(inp[:, 1::2] >= g.top - 1e-3) and np.all(inp[:, 1::2] <= g.top + g.new_h + 1e-3)
    # ...and back within float32 precision of the source coordinates.
    back = g.to_source(inp)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-3 * max(1.0, max(src_w, src_h) / 1000))
    # Corners of the frame map to the corners of the resized area.
    corners = np.array([0, 0, src_w, src_h], dtype=np.float32)
    np.testing.assert_allclose(
        g.to_input(corners), [g.left, g.top, g.left + g.new_w, g.top + g.new_h], rtol=0, atol=1e-3
    )


def test_to_source_clips_to_the_frame_and_leaves_its_input_alone() -> None:
    g = letterbox_geometry(1280, 720, 640, 640)  # 640 × 360 at top 140
    boxes = np.array([[-10, 100, 700, 560], [0, 0, 640, 640]], dtype=np.float32)
    before = boxes.copy()
    got = g.to_source(boxes)
    np.testing.assert_array_equal(boxes, before)
    np.testing.assert_allclose(got, [[0, 0, 1280, 720], [0, 0, 1280, 720]])
    inner = np.array([[320, 320, 330, 330]], dtype=np.float32)
    np.testing.assert_allclose(g.to_source(inner), [[640, 360, 660, 380]], atol=1e-4)


def _marker_centre(img: np.ndarray, g: LetterboxGeometry) -> tuple[float, float]:
    """Intensity-weighted centre (pixel-index coordinates) of the marker inside the resized area."""
    inner = img[g.top : g.top + g.new_h, g.left : g.left + g.new_w, 1].astype(np.float64)
    ys, xs = np.mgrid[0 : inner.shape[0], 0 : inner.shape[1]]
    total = inner.sum()
    assert total > 0, "the marker vanished"
    return float((xs * inner).sum() / total) + g.left, float((ys * inner).sum() / total) + g.top


@pytest.mark.parametrize(("src_w", "src_h", "dst_w", "dst_h"), [c for c in CASES if c[0] * c[1] > 1000])
def test_a_pixel_lands_where_to_input_says(src_w: int, src_h: int, dst_w: int, dst_h: int) -> None:
    """A marker drawn around source pixel (x, y) lands at `to_input` of that pixel, ±1 px.

    Coordinates are continuous with pixel k covering [k, k + 1): pixel (x, y) has its centre at
    (x + 0.5, y + 0.5), and a continuous coordinate c is pixel index c - 0.5 (the convention cv2.resize
    uses). When downscaling, a single pixel can fall between INTER_LINEAR's samples, so the marker is a
    square of about one output pixel or more, centred on the pixel.
    """
    g = letterbox_geometry(src_w, src_h, dst_w, dst_h)
    down = max(src_w / g.new_w, src_h / g.new_h)
    half = int(np.ceil(down)) if down > 1 else 0  # marker: (2 * half + 1) source pixels square
    rng = np.random.default_rng(src_w * 7 + src_h)
    for _ in range(5):
        x = int(rng.integers(min(half, src_w - 1), max(src_w - half, half + 1)))
        y = int(rng.integers(min(half, src_h - 1), max(src_h - half, half + 1)))
        image = np.zeros((src_h, src_w, 3), dtype=np.uint8)
        image[max(y - half, 0) : y + half + 1, max(x - half, 0) : x + half + 1] = 255
        got, _ = letterbox(image, dst_w, dst_h)
        cx, cy = _marker_centre(got, g)
        # Clipped markers (at the frame's edge) are not centred on (x, y): use the drawn square's centre.
        x_c = (max(x - half, 0) + min(x + half + 1, src_w)) / 2
        y_c = (max(y - half, 0) + min(y + half + 1, src_h)) / 2
        ex, ey = g.to_input(np.array([x_c, y_c], dtype=np.float32)) - 0.5
        assert abs(cx - ex) <= 1.0 and abs(cy - ey) <= 1.0, ((x, y), (cx, cy), (ex, ey))
