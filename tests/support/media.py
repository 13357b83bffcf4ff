"""Real encoded video for tests, written and read back with PyAV (libx264, libx265, mpeg4 are in its wheel).

Pixel convention, shared with `tests.support.models`: a position ``(x, y)`` is a continuous coordinate in
which pixel ``(i, j)`` (column ``i``, row ``j``) covers ``[i, i + 1) × [j, j + 1)``, so its centre is
``(i + 0.5, j + 0.5)``. That is the convention of ``cv2.resize`` and of
`streamer.preprocess.LetterboxGeometry` (a pure scale and offset of continuous coordinates), so a spot drawn
at ``(x, y)`` here comes back at ``(x, y)`` through letterbox → oracle model → ``to_source``.

What PyAV does (checked with PyAV 18, x264 / x265 / mpeg4 in .mp4):

- Frames are written with ``pts = 0, 1, 2, …`` in a ``1/fps`` time base; an .mp4 stream reads back in
  ``1/12800`` with ``pts = i * 12800 / fps`` (``i * 512`` at 25 fps), first pts 0, one decoded frame per
  written frame once the encoder is flushed, in presentation order.
- x264 ``preset=ultrafast`` has no B-frames; x265 ``ultrafast`` has (pattern ``IBBBP…``): decoding still
  returns every frame in order. ``bframes=`` forces either way.
- x264 and x265 refuse odd sizes in 4:2:0 (``avcodec_open2`` fails with an opaque ExternalError), so
  `write_clip` raises a ValueError first; pass ``pix_fmt="yuv444p"`` (x264 / x265) or use ``codec="mpeg4"``
  for odd sizes such as 101×51.
- Truncated files (`truncated_clip`): a plain .mp4 (moov atom at the end) cut anywhere cannot be opened
  at all (``av.InvalidDataError`` from ``av.open``); a ``faststart`` .mp4 opens, decodes the frames before
  the cut, then raises ``av.InvalidDataError`` from ``avcodec_send_packet()``; a cut .mkv or .ts just ends
  early (no error).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

ENCODERS = {"h264": "libx264", "hevc": "libx265", "mpeg4": "mpeg4"}
"""Short codec names accepted by `write_clip` → the PyAV encoder used."""

DEFAULT_CRF = {"libx264": 18, "libx265": 20}
BACKGROUND = 16
"""Value of the dark frames of `bright_spot_clip` (video black)."""


def write_clip(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    codec: str = "h264",
    fps: int | Fraction = 25,
    pix_fmt: str = "yuv420p",
    crf: int | None = None,
    gop: int | None = None,
    bframes: int | None = None,
    faststart: bool = False,
) -> Path:
    """Encode RGB ``HxWx3`` uint8 `frames` (all the same size) into `path` (.mp4, .mkv, .ts…) and return it.

    `codec`: ``"h264"`` (libx264, preset ultrafast), ``"hevc"`` (libx265, preset ultrafast, quiet) or
    ``"mpeg4"`` (qscale 2–3); an encoder name such as ``"libx264"`` is accepted too. `crf`: x264 / x265
    quality (default 18 / 20: mean abs diff ~1.5 on smooth frames, ~5.5 on detailed COCO photos). `gop`: the
    keyframe interval (encoder default when None). `bframes`: maximum consecutive B-frames (encoder preset
    when None). `faststart`: .mp4 only, put the moov atom at the front (see `truncated_clip`).

    Frame ``i`` gets ``pts = i`` in a ``1/fps`` time base; the encoder is flushed, so every frame written
    decodes back. Raises ValueError for no frames, a wrong shape or dtype, frames of different sizes, or an
    odd size that x264 / x265 cannot encode in 4:2:0 (use ``pix_fmt="yuv444p"`` or ``codec="mpeg4"``).
    """
    path = Path(path)
    encoder = ENCODERS.get(codec, codec)
    options = {"movflags": "faststart"} if faststart else {}
    count = 0
    with av.open(str(path), "w", options=options) as container:
        stream = None
        for frame in frames:
            _check_frame(frame, count)
            h, w = frame.shape[:2]
            if stream is None:
                stream = _add_stream(container, encoder, w, h, fps, pix_fmt, crf, gop, bframes)
            elif (w, h) != (stream.width, stream.height):
                raise ValueError(f"frame {count} is {w}x{h}, earlier frames {stream.width}x{stream.height}")
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = count
            video_frame.time_base = stream.codec_context.time_base
            container.mux(stream.encode(video_frame))
            count += 1
        if stream is None:
            raise ValueError(f"no frames to write into {path}")
        container.mux(stream.encode(None))  # flush: delayed (B-frame, lookahead) frames come out here
    return path


def _check_frame(frame: np.ndarray, index: int) -> None:
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frame {index}: expected an HxWx3 uint8 RGB array, got {frame.shape} {frame.dtype}")


def _add_stream(
    container: av.container.OutputContainer,
    encoder: str,
    w: int,
    h: int,
    fps: int | Fraction,
    pix_fmt: str,
    crf: int | None,
    gop: int | None,
    bframes: int | None,
) -> av.video.stream.VideoStream:
    if encoder in ("libx264", "libx265") and pix_fmt in ("yuv420p", "nv12") and (w % 2 or h % 2):
        raise ValueError(
            f"{encoder} cannot encode {w}x{h} in {pix_fmt} (4:2:0 needs an even width and height): "
            "crop or pad the frames, or pass pix_fmt='yuv444p' or codec='mpeg4'"
        )
    rate = Fraction(fps)
    stream = container.add_stream(encoder, rate=rate)
    if not isinstance(stream, av.video.stream.VideoStream):
        raise ValueError(f"{encoder!r} is not a video encoder")
    stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
    stream.codec_context.time_base = 1 / rate
    if encoder in DEFAULT_CRF:
        opts: dict[str, object] = {
            "preset": "ultrafast",
            "crf": str(crf if crf is not None else DEFAULT_CRF[encoder]),
        }
        if encoder == "libx265":
            opts["x265-params"] = "log-level=none"
        stream.options = opts
    elif encoder == "mpeg4":
        stream.options = {"qmin": "2", "qmax": "3"}
    if gop is not None:
        stream.codec_context.gop_size = gop
    if bframes is not None:
        stream.codec_context.max_b_frames = bframes
    return stream


def decode_frames(path: str | Path) -> list[np.ndarray]:
    """Every frame of the first video stream of `path`, decoded by PyAV, as RGB ``HxWx3`` uint8 arrays."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def decode_timestamps(path: str | Path) -> list[Fraction]:
    """Presentation time of every decoded frame of `path`, in seconds (``pts × time_base``), in order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [Fraction(f.pts) * stream.time_base for f in container.decode(stream)]


# --- real pictures -------------------------------------------------------------------------------------


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as an RGB ``HxWx3`` uint8 array (OpenCV decodes it; ValueError if it cannot)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class PictureClip:
    """A clip of still pictures, each held for `hold` frames: frame ``i`` shows ``pictures[i // hold]``."""

    path: Path
    pictures: list[np.ndarray]
    """The exact RGB frames that were encoded, one per source image (the decoded ones differ: lossy)."""
    sources: list[Path]
    """The image file behind each picture."""
    source_sizes: list[tuple[int, int]]
    """(w, h) of each source image; a box in picture pixels × (src_w / w, src_h / h) is in image pixels."""
    hold: int

    @property
    def frame_count(self) -> int:
        return len(self.pictures) * self.hold

    def picture_index(self, frame_index: int) -> int:
        """Which picture frame `frame_index` shows."""
        return frame_index // self.hold


def tinycoco_clip(
    path: str | Path,
    images: Sequence[str | Path],
    size: tuple[int, int] = (640, 480),
    hold: int = 3,
    codec: str = "h264",
    **write_options: object,
) -> PictureClip:
    """Encode `images` as a clip of `size` (w, h), each image held for `hold` consecutive frames.

    Each image is stretched to exactly `size` with ``cv2.resize(INTER_AREA)`` (no letterbox: the aspect
    ratio changes, so COCO boxes scale by ``w / src_w`` and ``h / src_h`` per axis). `write_options` go
    to `write_clip` (``fps``, ``crf``, ``gop``…). Returns the clip with the exact pictures encoded.
    """
    if hold < 1:
        raise ValueError(f"hold must be >= 1, got {hold}")
    sources = [Path(p) for p in images]
    pictures, source_sizes = [], []
    for src in sources:
        rgb = read_rgb(src)
        source_sizes.append((rgb.shape[1], rgb.shape[0]))
        if (rgb.shape[1], rgb.shape[0]) != tuple(size):
            rgb = cv2.resize(rgb, tuple(size), interpolation=cv2.INTER_AREA)
        pictures.append(rgb)
    frames = (pic for pic in pictures for _ in range(hold))
    write_clip(path, frames, codec=codec, **write_options)  # type: ignore[arg-type]
    return PictureClip(Path(path), pictures, sources, source_sizes, hold)


# --- synthetic frames for the oracle model ---------------------------------------------------------


def draw_disc(
    frame: np.ndarray, centre: tuple[float, float], radius: float, value: int = 255, supersample: int = 8
) -> np.ndarray:
    """Draw a filled, anti-aliased disc of `radius` centred at `centre` (x, y) into `frame`, in place.

    `centre` is in the continuous convention of this module (pixel centres at ``i + 0.5``), so the
    intensity centroid of the disc is at `centre` to well under 0.1 px, also for a fractional centre.
    Edge pixels blend `value` with what was there by their coverage (`supersample`² samples per pixel).
    Returns `frame`.
    """
    cx, cy = centre
    h, w = frame.shape[:2]
    x0, x1 = max(int(np.floor(cx - radius)), 0), min(int(np.ceil(cx + radius)) + 1, w)
    y0, y1 = max(int(np.floor(cy - radius)), 0), min(int(np.ceil(cy + radius)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return frame
    offsets = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(x0, x1)[:, None] + offsets).ravel() - cx
    ys = (np.arange(y0, y1)[:, None] + offsets).ravel() - cy
    inside = xs[None, :] ** 2 + ys[:, None] ** 2 <= radius * radius
    coverage = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))
    patch = frame[y0:y1, x0:x1].astype(np.float32)
    cov = coverage[..., None] if frame.ndim == 3 else coverage
    frame[y0:y1, x0:x1] = np.rint(patch + cov * (value - patch)).astype(frame.dtype)
    return frame


def bright_spot_frames(
    size: tuple[int, int],
    spots: Sequence[tuple[float, float]],
    radius: float,
    *,
    background: int = BACKGROUND,
    value: int = 255,
) -> list[np.ndarray]:
    """One dark ``h x w`` RGB frame per spot, each with a `value` disc (see `draw_disc`) at that spot."""
    w, h = size
    frames = []
    for spot in spots:
        frame = np.full((h, w, 3), background, dtype=np.uint8)
        frames.append(draw_disc(frame, spot, radius, value))
    return frames


def bright_spot_clip(
    path: str | Path,
    size: tuple[int, int],
    spots: Sequence[tuple[float, float]],
    radius: float,
    codec: str = "h264",
    **write_options: object,
) -> Path:
    """A clip of `size` (w, h) whose frame ``i`` is dark (16) with a bright (255) disc at ``spots[i]``.

    Spots are in source pixels, continuous convention (module docstring). For the oracle model keep the
    disc at least ~3 px of model input in radius, so that compression leaves its centre near 255.
    `write_options` go to `write_clip`. Returns `path`.
    """
    frames = bright_spot_frames(size, spots, radius)
    return write_clip(path, frames, codec=codec, **write_options)  # type: ignore[arg-type]


def moving_spots_clip(
    path: str | Path,
    size: tuple[int, int],
    paths: Sequence[Sequence[tuple[float, float] | None]],
    radius: float,
    codec: str = "h264",
    **write_options: object,
) -> Path:
    """A dark clip of `size` (w, h) with several bright discs: frame ``i`` has one at ``paths[k][i]`` for
    each spot ``k`` (none where that is None); every path has one entry per frame. For the spots oracle
    (`tests.support.models.write_spots_model`) keep the discs ~2.5 cells of model input in radius and their
    boxes apart. Returns `path`."""
    frames = len(paths[0])
    if any(len(p) != frames for p in paths):
        raise ValueError("every path needs one position (or None) per frame")
    w, h = size

    def frame(i: int) -> np.ndarray:
        picture = np.full((h, w, 3), BACKGROUND, dtype=np.uint8)
        for p in paths:
            if p[i] is not None:
                draw_disc(picture, p[i], radius)  # type: ignore[arg-type]
        return picture

    return write_clip(path, (frame(i) for i in range(frames)), codec=codec, **write_options)  # type: ignore[arg-type]


# --- broken files --------------------------------------------------------------------------------------


def corrupt_file(path: str | Path, size: int = 4096, seed: int = 0) -> Path:
    """Write `size` random bytes (fixed `seed`) to `path` (give it an .mp4 name); ``av.open`` rejects it.

    With the default seed PyAV 18 raises ``av.InvalidDataError`` from ``av.open`` (checked in the tests:
    random bytes could in principle sniff as some format, so keep the seed unless you check again).
    """
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def truncated_clip(src: str | Path, dst: str | Path, keep_fraction: float = 0.5) -> Path:
    """Copy the first `keep_fraction` of the bytes of clip `src` to `dst` (a file cut mid-stream).

    What a reader sees depends on the container (module docstring): a plain .mp4 does not open, a
    ``faststart`` .mp4 decodes the first part then raises, .mkv / .ts end early without an error.
    """
    if not 0.0 <= keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst
