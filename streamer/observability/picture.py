"""A stream's picture: its latest frame with the boxes, class names, scores, track ids, zones and lines.

Pictures are made only while someone looks, and never on the inference worker's critical path:

1. the HTTP server (`streamer.observability.endpoint`) asks for a stream's picture by touching
``<dir>/<stream>.want``;
2. the inference worker (`streamer.workers.pictures`) looks at those files four times a second; for a
   stream asked for within the last `WANT_S` seconds it copies one frame out of its ring slot at most
   `FPS` times a second and, once that frame's detections are known, hands it to a thread of its own that
   writes ``<dir>/<stream>.pic`` (a JSON header and the RGB pixels) and renames it into place;
3. the server reads that file, draws (`draw`) and encodes the JPEG (`jpeg`) in its own request thread.

``<dir>`` is the run directory's ``pictures/`` (shared memory). Only frames decoded on the CPU
(``rgb24`` rings) have pictures; those of NVDEC streams stay on the GPU.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from pathlib import Path

import msgspec
import numpy as np

PICTURES_DIR = "pictures"
"""The run directory's folder of pictures and requests."""
WANT_S = 5.0
"""A stream's picture is kept up to date this long after the last request for it."""
FPS = 5.0
"""At most this many pictures a second per stream."""


class Box(msgspec.Struct, array_like=True):
    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    class_name: str
    track_id: int | None = None


class Shape(msgspec.Struct, array_like=True):
    kind: str
    """``zone`` (a polygon) or ``line`` (two points, A then B)."""
    name: str
    points: list[tuple[float, float]]
    """In pixels of the frame."""
    label: str = ""
    """What to write beside it (its counts)."""


class PictureHeader(msgspec.Struct):
    stream: str
    frame: int
    pts: float | None
    capture_ts: float
    width: int
    height: int
    boxes: list[Box] = msgspec.field(default_factory=list)
    shapes: list[Shape] = msgspec.field(default_factory=list)
    written: float = 0.0
    """Unix time at which the picture was written."""


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(PictureHeader)
_LEN = struct.Struct("<I")


def picture_path(directory: Path, stream: str) -> Path:
    return directory / f"{stream}.pic"


def write_picture(directory: Path, header: PictureHeader, rgb: np.ndarray) -> None:
    """Write the picture of ``header.stream`` (``rgb``: ``H x W x 3`` uint8) atomically."""
    header.written = time.time()
    head = _encoder.encode(header)
    path = picture_path(directory, header.stream)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(_LEN.pack(len(head)))
        f.write(head)
        f.write(np.ascontiguousarray(rgb, dtype=np.uint8).data)
    os.replace(tmp, path)


def read_picture(directory: Path, stream: str) -> tuple[PictureHeader, np.ndarray] | None:
    """The latest picture of `stream`, or None (none yet, or a file that does not read back whole)."""
    try:
        data = picture_path(directory, stream).read_bytes()
        (n,) = _LEN.unpack_from(data)
        header = _decoder.decode(data[_LEN.size : _LEN.size + n])
        rgb = np.frombuffer(data, np.uint8, offset=_LEN.size + n).reshape(header.height, header.width, 3)
    except (OSError, struct.error, msgspec.DecodeError, ValueError):
        return None
    return header, rgb


def request(directory: Path, stream: str) -> None:
    """Ask the inference worker for pictures of `stream` (for the next `WANT_S` seconds)."""
    path = directory / f"{stream}.want"
    with contextlib.suppress(OSError):
        path.touch()
        os.utime(path)


def wanted(directory: Path, now: float | None = None) -> set[str]:
    """The streams whose pictures were asked for within the last `WANT_S` seconds."""
    now = time.time() if now is None else now
    out: set[str] = set()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return out
    for entry in entries:
        if entry.name.endswith(".want"):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime <= WANT_S:
                    out.add(entry.name[: -len(".want")])
    return out


# ------------------------------------------------------------------------------------------------ drawing


def track_colour(track_id: int | None) -> tuple[int, int, int]:
    """A saturated BGR colour per track id (golden-ratio hues, so that neighbours differ); untracked
    boxes are white."""
    import cv2

    if track_id is None:
        return (255, 255, 255)
    hue = int((track_id * 0.618034 % 1.0) * 180)
    hsv = np.array([[[hue, 255, 255]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


ZONE_COLOUR = (255, 160, 0)  # BGR: a light blue
LINE_COLOUR = (0, 220, 255)  # BGR: yellow


def _text(
    image: np.ndarray, text: str, x: float, y: float, colour: tuple[int, int, int], scale: float
) -> None:
    """`text` with its bottom-left corner at (x, y), on a dark band so that it reads on any picture."""
    import cv2

    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, font, scale, thickness)
    x0 = int(min(max(0, x), max(0, image.shape[1] - w)))
    y0 = int(min(max(h + base, y), image.shape[0] - 1))
    cv2.rectangle(image, (x0, y0 - h - base), (x0 + w, y0), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, (x0, y0 - base), font, scale, colour, thickness, cv2.LINE_AA)


def draw(header: PictureHeader, rgb: np.ndarray) -> np.ndarray:
    """The picture as a BGR image of the frame's size: zones (tinted), lines (A→B, with their counts),
    then each box in its track's colour, labelled ``class score #track``."""
    import cv2

    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    scale = max(0.4, image.shape[0] / 900)
    thick = max(2, round(image.shape[0] / 360))
    zones = [s for s in header.shapes if s.kind == "zone"]
    if zones:
        tint = image.copy()
        for s in zones:
            cv2.fillPoly(tint, [np.round(np.array(s.points)).astype(np.int32)], ZONE_COLOUR)
        image = cv2.addWeighted(tint, 0.25, image, 0.75, 0)
    for s in header.shapes:
        pts = np.round(np.array(s.points)).astype(np.int32)
        label = f"{s.name} {s.label}".strip()
        if s.kind == "zone":
            cv2.polylines(image, [pts], True, ZONE_COLOUR, thick, cv2.LINE_AA)
            top = pts[np.argmin(pts[:, 1])]
            _text(image, label, top[0], top[1] - thick, ZONE_COLOUR, scale)
        else:
            cv2.arrowedLine(
                image, tuple(pts[0]), tuple(pts[1]), LINE_COLOUR, thick, cv2.LINE_AA, tipLength=0.03
            )
            _text(image, label, pts[0][0], pts[0][1] - thick, LINE_COLOUR, scale)
    for b in header.boxes:
        colour = track_colour(b.track_id)
        p1, p2 = (round(b.x1), round(b.y1)), (round(b.x2), round(b.y2))
        cv2.rectangle(image, p1, p2, colour, thick, cv2.LINE_AA)
        tid = "" if b.track_id is None else f" #{b.track_id}"
        _text(image, f"{b.class_name} {b.score:.2f}{tid}", p1[0], p1[1] - thick, colour, scale)
    return image


def jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


__all__ = [
    "FPS",
    "PICTURES_DIR",
    "WANT_S",
    "Box",
    "PictureHeader",
    "Shape",
    "draw",
    "jpeg",
    "read_picture",
    "request",
    "track_colour",
    "wanted",
    "write_picture",
]
