"""Labelled video for `yolostream eval --video CLIP`: which decoded frame is which annotated image.

The annotation file is a COCO instances file with one image entry per labelled frame, as CVAT's "COCO
1.0" export writes it (``frame_000000.PNG``, ``frame_000001.PNG``, ...). The frame of an entry is

1. its ``frame_index`` (or ``frame``) field, an integer, when the entry has one (0-based); else
2. the number that ends its ``file_name`` stem (``frame_000123.jpg``, ``000123.png``, ``img-12.jpg``: 123,
   123, 12), counted from 0 as CVAT counts.

Frames the file does not list are decoded and skipped; two entries for one frame, an entry whose frame
cannot be told, a frame past the clip's end or a frame of another size than its entry's ``width`` x
``height`` are errors that name the entry.

The clip is decoded by the daemon's own source (`streamer.sources.open_source`): PyAV, or NVDEC where
``decoder`` (``--decoder``, else the config's first stream's) says so and a GPU is there, so compression,
the decoder and its colour conversion are part of what is measured.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.errors import YolostreamError

if TYPE_CHECKING:
    from streamer.config import Config

__all__ = ["FRAME_KEYS", "ClipFrames", "VideoError", "frame_indices", "frame_of"]

FRAME_KEYS = ("frame_index", "frame")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


class VideoError(YolostreamError, ValueError):
    """The clip and the annotation file do not fit together."""


def frame_of(entry: dict[str, Any]) -> int | None:
    """The 0-based frame index of an image entry (see the module docstring), or None if it has none."""
    for key in FRAME_KEYS:
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    match = _TRAILING_NUMBER.search(Path(str(entry.get("file_name", ""))).stem)
    return int(match.group(1)) if match else None


def frame_indices(entries: Sequence[dict[str, Any]], source: str) -> dict[int, dict[str, Any]]:
    """Frame index → image entry, for every entry of `entries` (errors name the entry)."""
    out: dict[int, dict[str, Any]] = {}
    for entry in entries:
        frame = frame_of(entry)
        if frame is None:
            raise VideoError(
                f"{source}: image {entry.get('id')} ({entry.get('file_name')!r}) names no frame of the clip: "
                f"give it a {FRAME_KEYS[0]!r} field or a file name ending in the frame number "
                "(frame_000123.png)"
            )
        if frame in out:
            raise VideoError(
                f"{source}: images {out[frame].get('id')} ({out[frame].get('file_name')!r}) and "
                f"{entry.get('id')} ({entry.get('file_name')!r}) are both frame {frame}"
            )
        out[frame] = entry
    return out


class ClipFrames:
    """``(image id, frame)`` for every annotated frame of `video`, decoded by the daemon's source.

    A frame is an RGB array (PyAV) or a `DeviceFrame` (NVDEC; valid until the next frame is asked for).
    Once iterated, `decoder` says which decoder ran (``cpu`` or ``nvdec``; a stream NVDEC cannot decode
    falls back to ``cpu``, as in the daemon).
    """

    def __init__(
        self,
        cfg: Config,
        video: Path,
        frames: dict[int, dict[str, Any]],
        *,
        decoder: str | None = None,
        engine_on_gpu: bool = False,
    ) -> None:
        if not video.is_file():
            raise VideoError(f"video {video} does not exist")
        self.cfg, self.video, self.frames, self.engine_on_gpu = cfg, video, frames, engine_on_gpu
        self.requested = decoder or cfg.sources[0].decoder
        self.decoder = ""

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        from streamer.config import SourceConfig
        from streamer.sources import open_source
        from streamer.sources.base import DecodedFrame

        video, frames = self.video, self.frames
        source_cfg = SourceConfig(id="eval", url=str(video.resolve()), decoder=self.requested)  # type: ignore[arg-type]
        source = open_source(source_cfg, engine_on_gpu=self.engine_on_gpu)
        last = max(frames)
        decoded = 0
        self.decoder = source.open().decoder
        try:
            for frame in source.frames():
                decoded = frame.index + 1
                entry = frames.get(frame.index)
                if entry is not None:
                    if isinstance(frame, DecodedFrame):
                        image: Any = frame.image
                        h, w = image.shape[:2]
                    else:
                        image, h, w = frame, frame.height, frame.width
                    want = (entry.get("width"), entry.get("height"))
                    if want != (None, None) and want != (w, h):
                        raise VideoError(
                            f"frame {frame.index} of {video.name} is {w}x{h} but its image entry "
                            f"{entry.get('id')} ({entry.get('file_name')!r}) is {want[0]}x{want[1]}"
                        )
                    yield int(entry["id"]), image
                if frame.index >= last:
                    return
        finally:
            if source.info is not None:
                self.decoder = source.info.decoder
            source.close()
        raise VideoError(
            f"the annotation file lists frame {last} but {video.name} has {decoded} frame(s) "
            "(frames are counted from 0)"
        )
