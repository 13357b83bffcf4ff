"""The source worker: decode one stream, copy each frame into a free slot of its ring, announce it.

File sources that are not paced block when the ring is full, so no frame is skipped. Live (and paced)
sources never wait for the inference worker: when every slot is busy, the new frame is dropped and
counted, and the inference worker itself keeps only the newest frame of a live stream when it lags.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamer.errors import EXIT_FAILURE, EXIT_OK, SourceError
from streamer.messages import EVENT_EOS, EVENT_ERROR, EVENT_STARTED, FrameReady, SourceExit, StreamEvent
from streamer.sources import Pacer, open_source
from streamer.transport.notify import NotifySender
from streamer.transport.ring import FrameRing
from streamer.workers.common import StopFlag, WorkerContext, start_worker

if TYPE_CHECKING:
    from streamer.config import SourceConfig
    from streamer.sources.base import DecodedFrame, FrameSource

log = logging.getLogger(__name__)

# Exit code of a source worker that failed and already published its error event (no second report).
EXIT_SOURCE_FAILED = 3
# A file source waiting for a free slot polls the ring, backing off from 1 ms to 20 ms: prompt when
# inference is quick, and cheap (a few wake-ups per batch) when it is slow and the cores are shared.
_WAIT_SLOT_S = (0.001, 0.02)


class RingWriter:
    """Owns the stream's ring; re-creates it (a new generation) when a frame no longer fits."""

    def __init__(self, run_dir: str, stream_id: str, slots: int) -> None:
        self._dir = Path(run_dir)
        self._stream = stream_id
        self._slots = slots
        self._generation = 0
        self.ring: FrameRing | None = None

    def ring_for(self, nbytes: int) -> FrameRing:
        if self.ring is None or self.ring.slot_bytes < nbytes:
            if self.ring is not None:
                self.ring.close()  # its file stays until the supervisor removes the run directory
            self._generation += 1
            path = self._dir / f"{self._stream}.{self._generation}.ring"
            self.ring = FrameRing.create(path, self._slots, nbytes)
        return self.ring

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None


def run_source(cfg: SourceConfig, ctx: WorkerContext) -> int:
    """Process entry point: returns the exit code."""
    stop = start_worker(ctx)
    sender = NotifySender(ctx.notify_endpoint)
    writer = RingWriter(ctx.run_dir, cfg.id, cfg.ring_slots)
    source = open_source(cfg)
    try:
        return _run(cfg, source, sender, writer, stop)
    except SourceError as exc:
        log.error("%s", exc)
        sender.send(StreamEvent(cfg.id, EVENT_ERROR, str(exc)))
        return EXIT_SOURCE_FAILED
    except Exception as exc:
        log.exception("stream %r: source worker failed", cfg.id)
        sender.send(StreamEvent(cfg.id, EVENT_ERROR, f"source worker failed: {exc!r}"))
        return EXIT_FAILURE
    finally:
        source.close()
        writer.close()
        sender.send(SourceExit(cfg.id))
        sender.close()


def _run(
    cfg: SourceConfig, source: FrameSource, sender: NotifySender, writer: RingWriter, stop: StopFlag
) -> int:
    info = source.open()
    log.info(
        "stream %s: opened %s (%s %dx%d%s, decoder %s)",
        cfg.id,
        cfg.display_url,
        info.codec,
        info.width,
        info.height,
        f" {info.fps:.2f} fps" if info.fps else "",
        info.decoder,
    )
    detail = {**info.as_detail(), "pid": os.getpid()}
    sender.send(StreamEvent(cfg.id, EVENT_STARTED, f"{info.codec} {info.width}x{info.height}", detail=detail))
    pacer = Pacer(cfg.paced, cfg.fps_limit)
    live = cfg.is_live or cfg.paced
    produced = dropped = 0
    for frame in source.frames():
        if stop.is_set():
            log.info("stream %s: stopping after %d frames", cfg.id, produced)
            return EXIT_OK
        if not pacer.admit(frame.pts):
            continue
        pacer.wait(frame.pts, stop)
        if _hand_over(cfg.id, frame, writer, sender, live, stop):
            produced += 1
        else:
            dropped += 1
            if dropped in (1, 10, 100) or dropped % 1000 == 0:
                log.warning(
                    "stream %s: %d frame(s) dropped because the inference worker is behind", cfg.id, dropped
                )
    log.info("stream %s: end of stream after %d frames", cfg.id, produced)
    sender.send(
        StreamEvent(cfg.id, EVENT_EOS, f"end of stream after {produced} frames", detail={"frames": produced})
    )
    return EXIT_OK


def _hand_over(
    stream: str, frame: DecodedFrame, writer: RingWriter, sender: NotifySender, live: bool, stop: StopFlag
) -> bool:
    """Copy `frame` into a free slot and announce it; False if it was dropped."""
    image = frame.image
    ring = writer.ring_for(image.nbytes)
    slot = ring.free_slot()
    delay = _WAIT_SLOT_S[0]
    while slot is None:
        if live or stop.is_set():
            return False
        time.sleep(delay)
        delay = min(delay * 2, _WAIT_SLOT_S[1])
        slot = ring.free_slot()
    ring.view(slot, image.shape)[...] = image
    seq = ring.commit(slot)
    note = FrameReady(
        stream,
        str(ring.path),
        slot,
        seq,
        frame.index,
        frame.pts,
        frame.capture_time,
        image.shape[1],
        image.shape[0],
        live,
    )
    if not sender.send(note):
        ring.abandon(slot)
        return False
    return True
