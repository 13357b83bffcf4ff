"""YOLOv7's letterbox, the CPU reference every other preprocessing path must match.

Reproduces `utils.datasets.letterbox` of WongKinYiu/yolov7 as `detect.py` and `test.py` call it for a
fixed square input (``auto=False, scaleFill=False, scaleup=True``):

- scale ``r = min(H / h, W / w)``; the resized size is ``(round(w * r), round(h * r))`` with Python's
  ``round`` (half to even), as yolov7 computes ``new_unpad``;
- ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)`` when the size changes, skipped when it does not;
- the padding ``dw, dh`` is split as yolov7 splits it: ``top = round(dh/2 - 0.1)``,
  ``bottom = round(dh/2 + 0.1)`` (same for left/right), so an odd padding puts the extra row at the
  bottom and the extra column at the right; padded with (114, 114, 114);
- then, like yolov7's loaders, BGR → RGB when the model wants RGB, HWC → CHW, ``/ 255`` as float32.

Boxes are mapped back with the exact geometry used here (`LetterboxGeometry.to_source`): the integer
offsets that were really padded and the per-axis scale of the resized image. yolov7's `scale_coords`
uses ``min`` of the two ratios and half the fractional padding instead; the two differ by well under a
pixel of the source frame, and this one is the geometrically exact inverse of what was drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where a source frame of `src_w` × `src_h` lands inside the `dst_w` × `dst_h` model input."""

    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    new_w: int
    """Width of the resized image inside the input (before padding)."""
    new_h: int
    left: int
    top: int
    ratio: float
    """yolov7's ``r``: the scale that was rounded into `new_w`, `new_h`."""

    @property
    def right(self) -> int:
        return self.dst_w - self.new_w - self.left

    @property
    def bottom(self) -> int:
        return self.dst_h - self.new_h - self.top

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``[..., 4]`` x1, y1, x2, y2 boxes from input pixels to source pixels, clipped to the frame.

        Returns a new float32 array; `boxes` is left untouched.
        """
        out = np.asarray(boxes, dtype=np.float32).copy()
        sx = self.src_w / self.new_w
        sy = self.src_h / self.new_h
        out[..., 0::2] = ((out[..., 0::2] - self.left) * sx).clip(0, self.src_w)
        out[..., 1::2] = ((out[..., 1::2] - self.top) * sy).clip(0, self.src_h)
        return out

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Inverse of `to_source` (without clipping): source pixels → input pixels."""
        out = np.asarray(boxes, dtype=np.float32).copy()
        out[..., 0::2] = out[..., 0::2] * (self.new_w / self.src_w) + self.left
        out[..., 1::2] = out[..., 1::2] * (self.new_h / self.src_h) + self.top
        return out


def letterbox_geometry(src_w: int, src_h: int, dst_w: int, dst_h: int) -> LetterboxGeometry:
    """The scale, resized size and padding split that yolov7's letterbox uses (see module docstring)."""
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"frame size must be positive, got {src_w}x{src_h}")
    r = min(dst_h / src_h, dst_w / src_w)
    new_w, new_h = round(src_w * r), round(src_h * r)
    dw, dh = (dst_w - new_w) / 2, (dst_h - new_h) / 2
    return LetterboxGeometry(
        src_w=src_w, src_h=src_h, dst_w=dst_w, dst_h=dst_h, new_w=new_w, new_h=new_h,
        left=round(dw - 0.1), top=round(dh - 0.1), ratio=r,
    )  # fmt: skip


def letterbox(
    image: np.ndarray, dst_w: int, dst_h: int, out: np.ndarray | None = None
) -> tuple[np.ndarray, LetterboxGeometry]:
    """Letterbox an ``HxWx3`` uint8 image into ``dst_h x dst_w x 3`` uint8, channel order unchanged.

    `out`, when given, is a ``dst_h x dst_w x 3`` uint8 buffer to write into (no allocation for the
    padded image). Returns the letterboxed image and its geometry.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    g = letterbox_geometry(image.shape[1], image.shape[0], dst_w, dst_h)
    if out is None:
        out = np.empty((dst_h, dst_w, 3), dtype=np.uint8)
    inner = out[g.top : g.top + g.new_h, g.left : g.left + g.new_w]
    if (g.new_w, g.new_h) == (g.src_w, g.src_h):
        inner[...] = image
    else:
        cv2.resize(image, (g.new_w, g.new_h), dst=inner, interpolation=cv2.INTER_LINEAR)
    out[: g.top] = PAD_VALUE
    out[g.top + g.new_h :] = PAD_VALUE
    out[g.top : g.top + g.new_h, : g.left] = PAD_VALUE
    out[g.top : g.top + g.new_h, g.left + g.new_w :] = PAD_VALUE
    return out, g


def to_input_tensor(image: np.ndarray, *, swap_rb: bool, out: np.ndarray | None = None) -> np.ndarray:
    """``HxWx3`` uint8 → ``3xHxW`` float32 in 0..1, swapping R and B when `swap_rb` (BGR ↔ RGB).

    `out`, when given, is a ``3xHxW`` float32 view (e.g. one item of the engine's batch buffer).
    """
    if out is None:
        out = np.empty((3, image.shape[0], image.shape[1]), dtype=np.float32)
    order = (2, 1, 0) if swap_rb else (0, 1, 2)
    for dst_c, src_c in enumerate(order):
        np.divide(image[:, :, src_c], np.float32(255), out=out[dst_c], casting="unsafe")
    return out
