"""Video sources: open a stream, decode it, yield frames. One module per decoder.

`open_source` picks the decoder for a stream entry of the config: the CPU decoder (PyAV, `cpu`), or NVDEC
(`nvdec`, yielding frames in GPU memory) wrapped so that the stream falls back to the CPU decoder when
NVDEC cannot decode it (`fallback`). ``decoder: auto`` takes NVDEC where a GPU and PyNvVideoCodec are
and the engine runs on the GPU.
Reconnecting live streams (`reconnect`), frozen-picture detection (`frozen`) and the guard against
decoder calls that block past their timeouts (`watchdog`) are decoder-independent; the source worker
(`streamer.workers.source`) drives them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from streamer.sources.base import DecodedFrame, DeviceFrame, FrameSource, Pacer, redact

if TYPE_CHECKING:
    from streamer.config import SourceConfig

__all__ = ["DecodedFrame", "DeviceFrame", "FrameSource", "Pacer", "open_source", "redact"]

log = logging.getLogger(__name__)


def open_source(
    cfg: SourceConfig,
    on_fallback: Callable[..., None] | None = None,
    *,
    engine_on_gpu: bool = True,
    device: int = 0,
) -> FrameSource:
    """A not-yet-opened source for the stream `cfg` (call `open()` in the worker process).

    `on_fallback(exc, frames)` is called when an NVDEC stream moves to the CPU decoder. With
    `engine_on_gpu` false (the engine runs on the CPU), ``decoder: auto`` is the CPU decoder. NVDEC decodes
    on GPU `device` (that of the inference worker the stream is placed on).
    """
    from streamer.sources.cpu import PyAvSource

    options: dict[str, Any] = dict(
        loop=cfg.loop, live=cfg.is_live, transport=cfg.transport,
        open_timeout_s=cfg.open_timeout_s, read_timeout_s=cfg.read_timeout_s,
    )  # fmt: skip

    def cpu() -> FrameSource:
        return PyAvSource(cfg.id, cfg.url, **options)

    if cfg.decoder == "cpu":
        return cpu()
    from streamer.sources.nvdec import NvdecSource, nvdec_usable

    if cfg.decoder == "auto" and not engine_on_gpu:
        log.debug("stream %s: decoder auto -> cpu (the engine runs on the CPU)", cfg.id)
        return cpu()
    if cfg.decoder == "auto" and (why := nvdec_usable()) is not None:
        log.debug("stream %s: decoder auto -> cpu (%s)", cfg.id, why)
        return cpu()
    if not engine_on_gpu:
        log.warning(
            "stream %s: decoder nvdec with an engine on the CPU: every frame is copied back to the host and "
            "letterboxed there, slower than decoder cpu",
            cfg.id,
        )
    from streamer.sources.fallback import FallbackSource

    return FallbackSource(
        NvdecSource(cfg.id, cfg.url, device=device, **options), cpu, on_fallback, live=cfg.is_live
    )
