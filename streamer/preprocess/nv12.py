"""NV12 → letterboxed model input: the NumPy model of the CUDA kernel (`streamer.preprocess.cuda_kernel`).

The GPU path must give the engine the same tensor as the CPU path, which is `letterbox` + `to_input_tensor`
applied to PyAV's ``frame.to_ndarray(format="rgb24")``. So this model reproduces, per output pixel:

1. **Colour conversion exactly as FFmpeg's swscale does it for yuv420p → rgb24** (libswscale 9, the
   unscaled x86 SIMD converter ``yuv420_rgb24`` that PyAV's reformat reaches): nearest ("replicated")
   chroma — pixel ``(x, y)`` takes the chroma sample ``(x // 2, y // 2)`` — and swscale's 16-bit
   fixed-point arithmetic, which truncates (``pmulhw``) rather than rounds::

       Y8 = (Y << 3) - y_offset;  U8 = (U << 3) - 1024;  V8 = (V << 3) - 1024
       y  = (Y8 * cy) >> 16
       R  = clip(y + ((V8 * v2r) >> 16)),  B = clip(y + ((U8 * u2b) >> 16))
       G  = clip(y + ((U8 * u2g) >> 16) + ((V8 * v2g) >> 16))

   with the coefficients swscale derives from its table ``ff_yuv2rgb_coeffs`` for the frame's colour
   matrix and range (`YuvCoefficients.for_stream`). This is bit-exact against PyAV 18.1 (FFmpeg 8) for
   BT.601, BT.709, FCC, SMPTE 240M and BT.2020 matrices, limited and full range (measured on x264 and
   x265 clips tagged with each; see `tests/preprocess/test_nv12_model.py`). An ideal floating-point
   conversion is *not* what the CPU path sees: it is on average 1.2 levels brighter than swscale (two
   truncations), which puts 25–40 % of the letterboxed values more than 1/255 away from the reference
   (max 3.7/255 on 1366×768); bilinear chroma upsampling instead of replication is worse still (up to
   77 levels apart at chroma edges before the resize).
   Like FFmpeg, an untagged stream (``colorspace`` unspecified) is BT.601 and limited range.

2. **The letterbox of the CPU reference** (`letterbox_geometry`, pad 114 split as yolov7 splits it) with
   **cv2's INTER_LINEAR source coordinates**: ``f = float32((d + 0.5) * (src / new) - 0.5)``,
   ``i = floor(f)``,
   clamped at the borders (``i < 0`` → 0 with weight 0; ``i >= src - 1`` → ``src - 1`` with weight 0),
   weights ``1 - frac`` and ``frac`` in float32 (`resize_taps`). The four neighbours are converted to RGB
   (step 1, exact integers), interpolated horizontally then vertically in float32, divided by 255.
   cv2 itself rounds its result to uint8 with 11-bit weights; the model keeps the float, so it differs
   from the reference by that final rounding only (< 1/255 for every value on the test clips).

3. Channel order (`swap_rb` for BGR models), NCHW, float32 or float16 (round to nearest even).

The kernel evaluates the same expressions in the same order (no FMA contraction), so its output equals
this model's bit for bit; the GPU test checks that.

Planes: ``y`` is ``H × W`` (or wider: a pitch is fine, only the first ``W`` columns are read), ``uv`` is
``ceil(H/2) × ceil(W/2) × 2`` interleaved U, V (or the same as ``H2 × pitch`` bytes). NVDEC decodes into
surfaces of the coded size (a multiple of 16, e.g. 1088 rows for 1080p) and hands out the display
rectangle, whose width and height PyNvVideoCodec rounds up to even numbers; odd sizes therefore arrive
with one extra (padding) column or row that the letterbox never reads, and the chroma of the last odd
column/row is the sample ``(W - 1) // 2``, as in swscale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from streamer.preprocess.letterbox import PAD_VALUE, LetterboxGeometry, letterbox_geometry

# swscale's ff_yuv2rgb_coeffs rows: (crv, cbu, cgu, cgv) in 1/65536, for limited-range chroma.
_SWS_COEFFS = {
    "bt601": (104597, 132201, 25675, 53279),
    "bt709": (117489, 138438, 13975, 34925),
    "fcc": (104448, 132798, 24759, 53109),
    "smpte240m": (117579, 136230, 16907, 35559),
    "bt2020": (110013, 140363, 12277, 42626),
}
MATRICES = tuple(_SWS_COEFFS)
# AVColorSpace codes (as PyAV's frame.colorspace and PyNvVideoCodec report them) → swscale's table row;
# every other code, "unspecified" (2) included, is BT.601, as in sws_getCoefficients.
_MATRIX_OF_AVCOL = {1: "bt709", 4: "fcc", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
AVCOL_RANGE_JPEG = 2
"""AVColorRange of full-range ("JPEG") YUV; 0 (unspecified) and 1 (MPEG) are limited range."""


def matrix_of(colorspace: int | None) -> str:
    """The colour matrix FFmpeg converts with for an ``AVColorSpace`` code (None: unspecified → BT.601)."""
    return _MATRIX_OF_AVCOL.get(int(colorspace or 2), "bt601")


def _round16(f: int) -> int:
    r = (f + (1 << 15)) >> 16
    return max(-0x7FFF, min(0x7FFF, r))


def _scale_224_255(c: int) -> int:
    q = abs(c) * 224 // 255  # C's int64 division truncates toward zero
    return q if c >= 0 else -q


@dataclass(frozen=True)
class YuvCoefficients:
    """swscale's int16 coefficients (ff_yuv2rgb_c_init_tables) for one colour matrix and range."""

    cy: int
    y_offset: int
    v2r: int
    u2b: int
    u2g: int
    v2g: int

    @classmethod
    def for_stream(cls, matrix: str = "bt601", full_range: bool = False) -> YuvCoefficients:
        """The coefficients for `matrix` (one of `MATRICES`) and range, as swscale derives them."""
        try:
            crv, cbu, cgu, cgv = _SWS_COEFFS[matrix]
        except KeyError:
            raise ValueError(f"unknown colour matrix {matrix!r}; known: {', '.join(MATRICES)}") from None
        cgu, cgv = -cgu, -cgv
        cy, oy = 1 << 16, 0
        if full_range:
            crv, cbu, cgu, cgv = (_scale_224_255(c) for c in (crv, cbu, cgu, cgv))
        else:
            cy, oy = cy * 255 // 219, 16 << 16
        # (contrast, saturation = 1 << 16 and brightness = 0 leave them unchanged)
        return cls(
            cy=_round16(cy * 8192), y_offset=_round16(oy * 8), v2r=_round16(crv * 8192),
            u2b=_round16(cbu * 8192), u2g=_round16(cgu * 8192), v2g=_round16(cgv * 8192),
        )  # fmt: skip

    @classmethod
    def for_frame(cls, colorspace: int | None, color_range: int | None) -> YuvCoefficients:
        """From a frame's ``AVColorSpace`` and ``AVColorRange`` codes (PyAV and NVDEC report both)."""
        return cls.for_stream(matrix_of(colorspace), int(color_range or 0) == AVCOL_RANGE_JPEG)

    def as_tuple(self) -> tuple[int, int, int, int, int, int]:
        """In the kernel's argument order: cy, y_offset, v2r, u2b, u2g, v2g."""
        return (self.cy, self.y_offset, self.v2r, self.u2b, self.u2g, self.v2g)


def yuv_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, c: YuvCoefficients) -> np.ndarray:
    """Per-pixel swscale conversion of same-shaped uint8 ``y``, ``u``, ``v`` → ``[..., 3]`` uint8 RGB."""
    y8 = (y.astype(np.int32) << 3) - c.y_offset
    u8 = (u.astype(np.int32) << 3) - 1024
    v8 = (v.astype(np.int32) << 3) - 1024
    luma = (y8 * c.cy) >> 16
    r = luma + ((v8 * c.v2r) >> 16)
    g = luma + ((u8 * c.u2g) >> 16) + ((v8 * c.v2g) >> 16)
    b = luma + ((u8 * c.u2b) >> 16)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def nv12_to_rgb(
    y_plane: np.ndarray, uv_plane: np.ndarray, width: int, height: int, c: YuvCoefficients
) -> np.ndarray:
    """The whole ``height × width`` picture as swscale's rgb24 (``HxWx3`` uint8)."""
    uv = _uv(uv_plane, width, height)
    rows, cols = np.arange(height), np.arange(width)
    chroma = uv[(rows // 2)[:, None], (cols // 2)[None, :]]
    return yuv_to_rgb(y_plane[:height, :width], chroma[..., 0], chroma[..., 1], c)


def _uv(uv_plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """The chroma plane as ``H2 × W2 × 2`` (accepts ``H2 × pitch`` bytes too)."""
    w2, h2 = (width + 1) // 2, (height + 1) // 2
    if uv_plane.ndim == 2:
        uv_plane = uv_plane[:, : 2 * w2].reshape(uv_plane.shape[0], w2, 2)
    if uv_plane.shape[0] < h2 or uv_plane.shape[1] < w2:
        raise ValueError(f"chroma plane {uv_plane.shape} is too small for a {width}x{height} picture")
    return uv_plane


def resize_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cv2 INTER_LINEAR's taps along one axis: first index, second index, their float32 weights.

    Source coordinate of output ``d``: ``float32((d + 0.5) * (src / dst) - 0.5)`` (``scale`` is
    ``1 / (dst / src)`` in double, as cv2 computes it); clamped at both borders with the weight moved to
    the border pixel. The kernel reads these tables rather than recomputing them, so both agree exactly.
    """
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int32)
    frac = (f - i0.astype(np.float32)).astype(np.float32)
    low = i0 < 0
    i0[low], frac[low] = 0, 0
    high = i0 >= src - 1
    i0[high], frac[high] = src - 1, 0
    i1 = np.minimum(i0 + 1, src - 1).astype(np.int32)
    w0 = (np.float32(1) - frac).astype(np.float32)
    return i0, i1, w0, frac


def letterbox_nv12(
    y_plane: np.ndarray,
    uv_plane: np.ndarray,
    width: int,
    height: int,
    dst_w: int,
    dst_h: int,
    coefficients: YuvCoefficients,
    *,
    swap_rb: bool = False,
    dtype: type | np.dtype = np.float32,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, LetterboxGeometry]:
    """Letterbox an NV12 picture into a ``3 × dst_h × dst_w`` tensor (RGB, or BGR with `swap_rb`) in 0..1.

    `y_plane` is ``>= height × width`` uint8, `uv_plane` the interleaved chroma (see the module
    docstring). `out`, when given, is written in place (e.g. one item of a batch buffer). Returns the
    tensor and the geometry (the same as `letterbox_geometry` gives the CPU path).
    """
    g = letterbox_geometry(width, height, dst_w, dst_h)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float16):
        raise ValueError(f"the model input must be float32 or float16, got {dtype}")
    if out is None:
        out = np.empty((3, dst_h, dst_w), dtype=dtype)
    xi0, xi1, xw0, xw1 = resize_taps(width, g.new_w)
    yi0, yi1, yw0, yw1 = resize_taps(height, g.new_h)
    # RGB only at the rows and columns the taps read (a 4K frame shrunk to 640 reads a sixth of it).
    rows, row_at = np.unique(np.concatenate([yi0, yi1]), return_inverse=True)
    cols, col_at = np.unique(np.concatenate([xi0, xi1]), return_inverse=True)
    uv = _uv(uv_plane, width, height)
    chroma = uv[(rows // 2)[:, None], (cols // 2)[None, :]]
    rgb = yuv_to_rgb(y_plane[rows][:, cols], chroma[..., 0], chroma[..., 1], coefficients).astype(np.float32)
    n_w, n_h = g.new_w, g.new_h
    c0, c1 = col_at[:n_w], col_at[n_w:]
    r0, r1 = row_at[:n_h], row_at[n_h:]
    # horizontal, then vertical, each as a0 * p0 + a1 * p1 in float32 (the kernel's order)
    h = rgb[:, c0] * xw0[None, :, None] + rgb[:, c1] * xw1[None, :, None]
    v = h[r0] * yw0[:, None, None] + h[r1] * yw1[:, None, None]
    v /= np.float32(255)
    pad = np.float32(PAD_VALUE) / np.float32(255)
    order = (2, 1, 0) if swap_rb else (0, 1, 2)
    out[...] = pad
    inner = out[:, g.top : g.top + n_h, g.left : g.left + n_w]
    for dst_c, src_c in enumerate(order):
        inner[dst_c] = v[:, :, src_c]  # (float16: numpy's cast rounds to nearest even, as __float2half_rn)
    return out, g
