"""Clips and comparisons for the NV12 → model-input path (the NumPy model, the CUDA kernel, its benchmark).

- `content_frames`: real photographs (tinycoco, when ``../shared`` exists) or, on a fresh clone,
  synthetic gradients with noise and edges — detailed enough that chroma siting and rounding show;
- `write_tagged_clip`: a yuv420p (or full-range yuvj420p) H.264 / HEVC clip whose bitstream declares a
  colour matrix and range (VUI), so that decoders and swscale pick them up;
- `nv12_planes`: the NV12 planes of a PyAV frame (its yuv420p planes, U and V interleaved: exactly what
  NVDEC hands out for the same bitstream, since both decoders are bit-exact);
- `reference_input`: the CPU path's tensor for the frame (`letterbox` + `to_input_tensor` on PyAV's
  rgb24); `delta_histogram`: |Δ| between two tensors in 1/255 steps.

Used by tests/preprocess and benchmarks/gpu_kernel_accuracy.py (which runs on the GPU host too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from streamer.preprocess.letterbox import letterbox, to_input_tensor
from streamer.preprocess.nv12 import YuvCoefficients

SIZES = ((1920, 1080), (1280, 720), (1366, 768), (720, 1280), (3840, 2160))
"""The sizes of the issue's accuracy criterion (1366×768: chroma 683 wide)."""
CODECS = ("h264", "hevc")
_ENCODERS = {"h264": "libx264", "hevc": "libx265"}
_SHARED_IMAGES = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tinycoco" / "images" / "val2017"
)
DELTA_BINS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
"""Edges of the |Δ| histogram, in 1/255 steps (the last bin is ``>= 2``)."""


def content_frames(size: tuple[int, int], count: int = 2, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """`count` RGB frames of `size` (w, h) and what they are: tinycoco photographs, else synthetic."""
    w, h = size
    images = sorted(_SHARED_IMAGES.glob("*.jpg")) if _SHARED_IMAGES.is_dir() else []
    if images:
        frames = []
        for path in images[:count]:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            frames.append(
                cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            )
        return frames, "tinycoco"
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = []
    for i in range(count):
        base = np.stack(
            [
                127 + 120 * np.sin(xx / (37 + 11 * i) + yy / 53),
                127 + 120 * np.cos(yy / (29 + 7 * i) - xx / 71),
                255 * ((xx // 64 + yy // 48 + i) % 2),
            ],
            axis=-1,
        )
        noise = rng.normal(0, 12, (h, w, 3))
        frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return frames, "synthetic"


def write_tagged_clip(
    path: str | Path,
    frames: Sequence[np.ndarray],
    codec: str = "h264",
    colorspace: int | None = None,
    color_range: int | None = None,
    crf: int = 18,
) -> Path:
    """Encode RGB `frames` as yuv420p `codec` (h264/hevc) in `path` (.mkv), declaring the colour matrix.

    `colorspace` is an AVColorSpace code (1 BT.709, 5/6 BT.601, 4 FCC, 7 SMPTE 240M, 9 BT.2020) and
    `color_range` an AVColorRange (1 limited, 2 full); None leaves the stream untagged (FFmpeg then
    assumes BT.601 limited). The RGB → YUV conversion uses the same matrix and range.
    """
    path = Path(path)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(_ENCODERS[codec], rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        options = {"preset": "ultrafast", "crf": str(crf)}
        if codec == "hevc":
            # One thread: under two busy loops the threaded encoder's flush once failed to mux (EINVAL)
            options["x265-params"] = "log-level=none:pools=1:frame-threads=1"
        stream.options = options
        ctx = stream.codec_context
        if colorspace is not None:
            ctx.colorspace = colorspace
            ctx.color_primaries = colorspace if colorspace in (1, 4, 5, 6, 7, 9) else 2
            ctx.color_trc = colorspace if colorspace in (1, 4, 5, 6, 7) else 2
        if color_range is not None:
            ctx.color_range = color_range
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame = frame.reformat(
                format="yuv420p", dst_colorspace=colorspace or 5, dst_color_range=color_range or 1
            )
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@dataclass(frozen=True)
class Nv12Frame:
    """One decoded picture as NV12 planes plus what the colour conversion needs."""

    y: np.ndarray
    """``H × W`` uint8."""
    uv: np.ndarray
    """``ceil(H/2) × ceil(W/2) × 2`` uint8, U then V."""
    width: int
    height: int
    colorspace: int
    color_range: int
    rgb: np.ndarray
    """PyAV's rgb24 of the same frame (what the CPU path letterboxes)."""

    @property
    def coefficients(self) -> YuvCoefficients:
        return YuvCoefficients.for_frame(self.colorspace, self.color_range)

    @property
    def nv12(self) -> np.ndarray:
        """The picture as one ``(H + ceil(H/2)) × W`` NV12 buffer (even W), as NVDEC lays it out."""
        w2 = self.uv.shape[1] * 2
        y = np.zeros((self.height, w2), np.uint8)
        y[:, : self.width] = self.y
        return np.concatenate([y, self.uv.reshape(self.uv.shape[0], w2)])


def _plane(frame: av.VideoFrame, index: int, rows: int, cols: int) -> np.ndarray:
    plane = frame.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:rows, :cols].copy()


def nv12_planes(frame: av.VideoFrame) -> Nv12Frame:
    """The NV12 planes of a yuv420p / yuvj420p PyAV frame, with its colour tags and PyAV's rgb24."""
    if frame.format.name not in ("yuv420p", "yuvj420p"):
        raise ValueError(f"expected a yuv420p frame, got {frame.format.name}")
    w, h = frame.width, frame.height
    w2, h2 = (w + 1) // 2, (h + 1) // 2
    y = _plane(frame, 0, h, w)
    uv = np.stack([_plane(frame, 1, h2, w2), _plane(frame, 2, h2, w2)], axis=-1)
    return Nv12Frame(
        y, uv, w, h, int(frame.colorspace), int(frame.color_range), frame.to_ndarray(format="rgb24")
    )


def decode_nv12(path: str | Path, limit: int | None = None) -> list[Nv12Frame]:
    """The frames of `path` decoded by PyAV, as `Nv12Frame`s."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(nv12_planes(frame))
            if limit is not None and len(out) >= limit:
                break
    return out


def reference_input(rgb: np.ndarray, dst_w: int = 640, dst_h: int = 640) -> np.ndarray:
    """The CPU path's model input for an RGB frame: ``3 × dst_h × dst_w`` float32 RGB."""
    boxed, _ = letterbox(rgb, dst_w, dst_h)
    return to_input_tensor(boxed, swap_rb=False)


def delta_histogram(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """|a - b| in 1/255 steps: max, share within 1 step, and counts per `DELTA_BINS` bin."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64)) * 255
    counts, _ = np.histogram(d, bins=[*DELTA_BINS, np.inf])
    hist = {
        f"[{lo:g},{hi:g})": int(n)
        for lo, hi, n in zip(DELTA_BINS, [*DELTA_BINS[1:], np.inf], counts, strict=True)
    }
    return {"max": float(d.max()), "within_1": float(np.mean(d <= 1 + 1e-6)), "values": int(d.size), **hist}
