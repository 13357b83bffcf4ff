"""Video sources: open a stream, decode it, yield frames. One module per decoder.

`open_source` picks the decoder for a stream entry of the config. Only the CPU decoder (PyAV) exists so
far; the NVDEC decoder will implement the same `FrameSource` interface and yield device frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamer.sources.base import DecodedFrame, FrameSource, Pacer

if TYPE_CHECKING:
    from streamer.config import SourceConfig

__all__ = ["DecodedFrame", "FrameSource", "Pacer", "open_source"]


def open_source(cfg: SourceConfig) -> FrameSource:
    """A not-yet-opened source for the stream `cfg` (call `open()` in the worker process)."""
    from streamer.sources.cpu import PyAvSource

    # decoder: auto and nvdec fall back to the CPU until the NVDEC source exists.
    return PyAvSource(cfg.id, cfg.url, loop=cfg.loop, live=cfg.is_live)
