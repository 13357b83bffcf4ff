"""Video sources: open a stream, decode it, yield frames. One module per decoder.

`open_source` picks the decoder for a stream entry of the config. Only the CPU decoder (PyAV) exists so
far; the NVDEC decoder will implement the same `FrameSource` interface and yield device frames.
Reconnecting live streams (`reconnect`), frozen-picture detection (`frozen`) and the guard against
decoder calls that block past their timeouts (`watchdog`) are decoder-independent; the source worker
(`streamer.workers.source`) drives them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamer.sources.base import DecodedFrame, FrameSource, Pacer, redact

if TYPE_CHECKING:
    from streamer.config import SourceConfig

__all__ = ["DecodedFrame", "FrameSource", "Pacer", "open_source", "redact"]


def open_source(cfg: SourceConfig) -> FrameSource:
    """A not-yet-opened source for the stream `cfg` (call `open()` in the worker process)."""
    from streamer.sources.cpu import PyAvSource

    # decoder: auto and nvdec fall back to the CPU until the NVDEC source exists.
    return PyAvSource(
        cfg.id, cfg.url, loop=cfg.loop, live=cfg.is_live, transport=cfg.transport,
        open_timeout_s=cfg.open_timeout_s, read_timeout_s=cfg.read_timeout_s,
    )  # fmt: skip
