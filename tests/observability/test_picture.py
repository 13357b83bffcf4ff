"""A stream's picture (streamer.observability.picture): the file the inference worker writes, the requests,
the drawing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np

from streamer.observability.picture import (
    WANT_S,
    Box,
    PictureHeader,
    Shape,
    draw,
    jpeg,
    read_picture,
    request,
    track_colour,
    wanted,
    write_picture,
)
from streamer.observability.web import page


def _header(**kw: object) -> PictureHeader:
    base: dict[str, object] = {
        "stream": "cam",
        "frame": 7,
        "pts": 0.28,
        "capture_ts": 1.0,
        "width": 320,
        "height": 200,
    }
    return PictureHeader(**{**base, **kw})  # type: ignore[arg-type]


def test_a_picture_reads_back_whole_and_a_broken_file_reads_as_none(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (200, 320, 3), dtype=np.uint8)
    header = _header(
        boxes=[Box(1, 2, 30, 40, 0.9, "person", 3)], shapes=[Shape("line", "door", [(0, 0), (9, 9)])]
    )
    write_picture(tmp_path, header, rgb)
    got = read_picture(tmp_path, "cam")
    assert got is not None
    back, pixels = got
    assert back.boxes == header.boxes and back.shapes == header.shapes and back.frame == 7
    assert abs(back.written - time.time()) < 60
    np.testing.assert_array_equal(pixels, rgb)
    assert read_picture(tmp_path, "other") is None
    path = tmp_path / "cam.pic"
    path.write_bytes(path.read_bytes()[:1000])  # (a file cut short: never a partial picture)
    assert read_picture(tmp_path, "cam") is None


def test_requests_last_want_s(tmp_path: Path) -> None:
    assert wanted(tmp_path / "missing") == set()
    request(tmp_path, "a")
    request(tmp_path, "b")
    old = time.time() - WANT_S - 1
    os.utime(tmp_path / "b.want", (old, old))
    assert wanted(tmp_path) == {"a"}
    request(tmp_path, "b")  # asked again: wanted again
    assert wanted(tmp_path) == {"a", "b"}


def _saturation(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1]


def test_boxes_are_drawn_in_their_tracks_colours_where_they_are() -> None:
    rgb = np.full((200, 320, 3), 16, np.uint8)
    boxes = [Box(40, 60, 120, 160, 0.91, "person", 5), Box(200, 20, 300, 90, 0.5, "car", None)]
    zone = Shape("zone", "yard", [(150, 100), (310, 100), (310, 190), (150, 190)], "0 inside")
    image = cv2.imdecode(np.frombuffer(jpeg(draw(_header(boxes=boxes, shapes=[zone]), rgb)), np.uint8), 1)
    assert image.shape == (200, 320, 3)
    sat = _saturation(image)
    # The tracked box's left edge, below its label, is in its track's (saturated) colour.
    edge = image[100:150, 39:42].reshape(-1, 3).mean(axis=0)
    assert np.abs(edge - np.array(track_colour(5))).max() < 60, edge
    assert sat[100:150, 39:42].mean() > 150
    # The untracked one is white; inside the boxes the (grey) frame is untouched.
    assert image[50:85, 299:302].min() > 180
    assert sat[80:140, 60:100].max() < 40 and image[80:140, 60:100].max() < 40
    # The zone is tinted, outside it nothing is.
    assert sat[150:180, 200:260].mean() > 60 and sat[150:180, 5:30].max() < 40


def test_the_page_lists_the_streams_with_their_pictures() -> None:
    text = page({"cam1": "running", "gate": "reconnecting"})
    assert '<figure class="stream" id="stream-cam1"' in text and 'src="/streams/gate/latest.jpg"' in text
    assert '<span class="state">reconnecting</span>' in text
    assert "2 stream(s)" in text
