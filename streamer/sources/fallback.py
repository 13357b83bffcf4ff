"""Per-stream fallback from NVDEC to the CPU decoder, at open or in the middle of a stream.

`FallbackSource` wraps the NVDEC source. When it raises `DecoderUnavailable` (a codec or profile NVDEC
lacks, no free decoder session, repeated hardware errors), the stream switches to the CPU decoder for
the rest of the worker's life; `on_fallback` is called once (the source worker logs it and publishes a
``fallback`` event). Other streams are separate processes and keep their decoders.

A switch in the middle of a file re-opens it on the CPU and skips the frames already produced, so frame
indices go on without a gap or a repeat; a live stream goes on from the CPU decoder's first frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from streamer.sources.base import Frame as AnyFrame
from streamer.sources.base import FrameSource, SourceInfo
from streamer.sources.nvdec import DecoderUnavailable

log = logging.getLogger(__name__)


class FallbackSource:
    """`primary` (NVDEC) until it gives up, then `make_fallback()` (the CPU decoder)."""

    def __init__(
        self,
        primary: FrameSource,
        make_fallback: Callable[[], FrameSource],
        on_fallback: Callable[[DecoderUnavailable, int], None] | None = None,
        live: bool = False,
    ) -> None:
        self.stream_id = primary.stream_id
        self.current = primary
        self._make_fallback = make_fallback
        self._on_fallback = on_fallback
        self._live = live
        self.switched = False

    @property
    def info(self) -> SourceInfo | None:
        return self.current.info

    @info.setter
    def info(self, value: SourceInfo | None) -> None:
        self.current.info = value

    def _switch(self, exc: DecoderUnavailable, produced: int) -> None:
        log.warning("stream %s: %s; decoding on the CPU from now on", self.stream_id, exc)
        try:
            self.current.close()
        except Exception:  # the failed decoder's own clean-up must not stop the switch
            log.exception("stream %s: closing the NVDEC source failed", self.stream_id)
        self.current = self._make_fallback()
        self.switched = True
        if self._on_fallback is not None:
            self._on_fallback(exc, produced)

    def open(self) -> SourceInfo:
        if not self.switched:
            try:
                return self.current.open()
            except DecoderUnavailable as exc:
                self._switch(exc, 0)
        return self.current.open()

    def frames(self) -> Iterator[AnyFrame]:
        produced = 0
        try:
            for frame in self.current.frames():
                yield frame
                produced += 1
            return
        except DecoderUnavailable as exc:
            if self.switched:
                raise
            self._switch(exc, produced)
        self.current.open()
        for frame in self.current.frames():
            if self._live:
                frame.index += produced  # a new decoder's count starts at 0: continue the old one's
            elif frame.index < produced:
                continue  # a file starts over: skip what NVDEC already produced
            yield frame

    def close(self) -> None:
        self.current.close()
