"""What every decoder yields, and the pacing that turns a file into a live-like stream."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote, urlsplit

import numpy as np

# `scheme://user:password@` anywhere in a text; the password may contain anything but blanks and quotes.
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*):[^\s'\"]*@")


def redact(text: str, url: str) -> str:
    """`text` (an FFmpeg error or log line, which may echo the URL) without the credentials of `url`.

    The URL is replaced by its redacted form (`streamer.config.redact_url`), then any other
    ``scheme://user:password@`` and any remaining occurrence of the password itself are masked.
    """
    from streamer.config import redact_url

    for variant in dict.fromkeys((url, unquote(url))):
        text = text.replace(variant, redact_url(variant))
    text = _USERINFO.sub(r"\1:***@", text)
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    for secret in dict.fromkeys((password, unquote(password or ""))):
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


@dataclass
class DecodedFrame:
    """One decoded picture, RGB ``HxWx3`` uint8 on the CPU path."""

    image: np.ndarray
    index: int
    """0-based count of frames the source produced; keeps counting across loops of a file."""
    pts: float | None
    """Presentation time in seconds (offset by the file's duration on each loop), None if unknown."""
    capture_time: float = field(default_factory=time.time)


@dataclass
class DeviceFrame:
    """One decoded picture in GPU memory (NVDEC path): NV12 planes valid until the source's next frame.

    The planes are ready once the work queued on `stream` so far has run: copy them out on that stream.
    """

    index: int
    pts: float | None
    width: int
    height: int
    y_ptr: int
    """Device address of the Y plane (`height` rows of `pitch` bytes)."""
    uv_ptr: int
    """Device address of the interleaved UV plane (``ceil(height / 2)`` rows of `pitch` bytes)."""
    pitch: int
    stream: int
    """The ``cudaStream_t`` (as an int) the decoder wrote the planes on."""
    colorspace: int = 2
    """AVColorSpace code of the stream (2: unspecified → BT.601, as FFmpeg)."""
    color_range: int = 0
    """AVColorRange code (2: full range)."""
    capture_time: float = field(default_factory=time.time)
    luma_sample: Callable[[], np.ndarray] | None = None
    """A small host copy of the picture's luma (every few rows), for frozen-picture detection."""


Frame = DecodedFrame | DeviceFrame


@dataclass(frozen=True)
class SourceInfo:
    """What a stream turned out to be once opened, for the `started` event and logs."""

    codec: str
    width: int
    height: int
    fps: float | None
    decoder: str

    def as_detail(self) -> dict[str, str | int | float]:
        detail: dict[str, str | int | float] = {
            "codec": self.codec, "width": self.width, "height": self.height, "decoder": self.decoder,
        }  # fmt: skip
        if self.fps:
            detail["fps"] = round(self.fps, 3)
        return detail


class FrameSource(Protocol):
    """A decoder for one stream. `open` raises `SourceError` (or its subclasses) with a clear reason."""

    stream_id: str
    info: SourceInfo | None

    def open(self) -> SourceInfo: ...

    def frames(self) -> Iterator[Frame]:
        """Decoded frames until the stream ends (or forever when looping a file / for live streams).

        `DeviceFrame`s from the NVDEC source, `DecodedFrame`s from the CPU decoder."""
        ...

    def close(self) -> None: ...


class Pacer:
    """Paces frames by their pts against the wall clock (``realtime``) and thins them to ``fps_limit``.

    `admit` says whether a frame should be kept (False: skipped by the fps limit); `wait` sleeps until
    the frame's presentation time when pacing, and returns early when `stop` becomes true.
    """

    def __init__(self, realtime: bool, fps_limit: float | None) -> None:
        self.realtime = realtime
        self.interval = 1.0 / fps_limit if fps_limit else 0.0
        self._next_pts: float | None = None
        self._origin: tuple[float, float] | None = None  # (pts, monotonic time) of the first frame

    def admit(self, pts: float | None) -> bool:
        if not self.interval or pts is None:
            return True
        if self._next_pts is not None and pts < self._next_pts - self.interval - 1e-6:
            self._next_pts = None  # earlier than the last frame kept: the stream's clock restarted
        if self._next_pts is not None and pts < self._next_pts - 1e-6:
            return False
        # Advance from the scheduled time, not from this pts, so the long-run rate is exact.
        base = pts if self._next_pts is None or pts - self._next_pts > self.interval else self._next_pts
        self._next_pts = base + self.interval
        return True

    def wait(self, pts: float | None, stop: object | None = None) -> None:
        if not self.realtime or pts is None:
            return
        now = time.monotonic()
        if self._origin is None or pts < self._origin[0]:
            self._origin = (pts, now)
            return
        due = self._origin[1] + (pts - self._origin[0])
        while (delay := due - time.monotonic()) > 0:
            if stop is not None and stop.is_set():  # type: ignore[attr-defined]
                return
            time.sleep(min(delay, 0.05))
