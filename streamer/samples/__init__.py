"""Sample clips shipped with yolostream (``url: sample:<name>`` in a config), made on first use.

A sample is a few CC BY photographs (see ATTRIBUTION.md) encoded by PyAV into a short H.264 clip in the
cache directory, so that the demo detects real objects on a machine with nothing but Python.
"""

from __future__ import annotations

import logging
import os
import tempfile
from importlib import resources
from pathlib import Path

import av
import cv2
import numpy as np

from streamer.paths import cache_dir

log = logging.getLogger(__name__)

SCHEME = "sample:"
# name -> (pictures, frame size, seconds each picture is held)
SAMPLES: dict[str, tuple[tuple[str, ...], tuple[int, int], float]] = {
    "demo": (
        ("000000303818.jpg", "000000252219.jpg", "000000456496.jpg", "000000397133.jpg"),
        (640, 480),
        2.0,
    ),
}
FPS = 25


def sample_path(name: str) -> Path:
    """The cached clip of sample `name`, made now if it is not there yet."""
    if name not in SAMPLES:
        raise KeyError(f"unknown sample {name!r}; known: {', '.join(sorted(SAMPLES))}")
    path = cache_dir() / "samples" / f"{name}.mp4"
    if not path.exists():
        log.info("making the sample clip %s (first use)", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(name, path)
    return path


def _fit(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale `image` to fit `size` (w, h) keeping its aspect ratio, centred on black."""
    w, h = size
    r = min(w / image.shape[1], h / image.shape[0])
    nw, nh = round(image.shape[1] * r), round(image.shape[0] * r)
    canvas = np.zeros((h, w, 3), np.uint8)
    x, y = (w - nw) // 2, (h - nh) // 2
    canvas[y : y + nh, x : x + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return canvas


def _write(name: str, path: Path) -> None:
    pictures, size, seconds = SAMPLES[name]
    folder = resources.files(__package__)
    fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, "w") as container:
            stream = container.add_stream("libx264", rate=FPS, options={"preset": "veryfast", "crf": "20"})
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            for picture in pictures:
                data = np.frombuffer(folder.joinpath(picture).read_bytes(), np.uint8)
                bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
                if bgr is None:
                    raise ValueError(f"sample picture {picture} cannot be decoded (damaged install?)")
                rgb = np.asarray(
                    cv2.cvtColor(_fit(np.asarray(bgr, np.uint8), size), cv2.COLOR_BGR2RGB), np.uint8
                )
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                for _ in range(round(seconds * FPS)):
                    for packet in stream.encode(frame):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)  # atomic: two streams of the same sample may race to make it
    finally:
        Path(tmp).unlink(missing_ok=True)
