"""The source worker: decode one stream, copy each frame into a free slot of its ring, announce it.

File sources that are not paced block when the ring is full, so no frame is skipped. Live (and paced)
sources never wait for the inference worker: when every slot is busy, the new frame is dropped and
counted, and the inference worker itself keeps only the newest frame of a live stream when it lags.

A live stream (a network URL) does not end the worker when it fails: every failure (cannot connect, the
server closed the stream, no data for ``read_timeout_s``, a frozen picture) becomes a `reconnecting`
event and a retry after a backoff delay (`streamer.sources.reconnect`); ``reconnect.down_after`` failures
in a row give a `down` event and retries at the slow rate; the first frame after failures an `up` event.
Frame indices keep counting across reconnects. Every decoder call of a live stream runs under a watchdog:
one that blocks past FFmpeg's own timeouts ends the worker with `EXIT_SOURCE_STALLED` (restart it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from streamer.errors import EXIT_FAILURE, EXIT_OK, EXIT_SOURCE_FAILED, EXIT_SOURCE_STALLED, SourceError
from streamer.messages import (
    EVENT_DOWN,
    EVENT_EOS,
    EVENT_ERROR,
    EVENT_FALLBACK,
    EVENT_FROZEN,
    EVENT_RECONNECTING,
    EVENT_STARTED,
    EVENT_UP,
    SourceExit,
    StreamEvent,
)
from streamer.observability.metrics import SourceMetrics, source_metrics
from streamer.sources import DeviceFrame, Pacer, open_source, redact
from streamer.sources.frozen import FrozenDetector
from streamer.sources.reconnect import Backoff, BackoffPolicy
from streamer.sources.watchdog import Watchdog
from streamer.transport.notify import NotifySender
from streamer.workers.common import (
    Prior,
    StopFlag,
    WorkerContext,
    heartbeat,
    start_worker,
)
from streamer.workers.ring_writer import RingWriter, hand_over

if TYPE_CHECKING:
    from streamer.config import SourceConfig
    from streamer.sources.base import Frame, FrameSource, SourceInfo

log = logging.getLogger(__name__)

# How much longer than its own timeout a decoder call may take before the watchdog ends the worker.
WATCHDOG_GRACE_S = 10.0
# A reconnect delay is slept in steps of this, so that a stop request is noticed promptly.
_STOP_POLL_S = 0.1
# A file source waiting for a free slot polls the ring, backing off from 1 ms to 20 ms: prompt when
# inference is quick, and cheap (a few wake-ups per batch) when it is slow and the cores are shared.


def run_source(cfg: SourceConfig, ctx: WorkerContext) -> int:
    """Process entry point: returns the exit code."""
    stop = start_worker(ctx)
    heartbeat().warm()  # from here on its loop beats (each frame, each wait): the plain limit applies
    return serve_stream(cfg, ctx, stop, lambda what, limit: exit_stalled(cfg.id, ctx, what, limit))


def serve_stream(
    cfg: SourceConfig, ctx: WorkerContext, stop: StopFlag, on_stall: Callable[[str, float], None]
) -> int:
    """Run one stream until it ends, fails or `stop` is set: the exit code its worker would return.

    The body of a source worker, also run in a thread per stream by a decoder group
    (`streamer.workers.decoder_group`). `on_stall(what, limit_s)` is the watchdog's verdict on a decoder
    call that blocked past its timeouts; it does not return (it ends the process).
    """
    sender = NotifySender(ctx.notify_endpoint)
    writer = RingWriter(ctx.run_dir, cfg.id, cfg.ring_slots, ctx.inference_epoch, ctx.cuda_device)
    engine_on_gpu = ctx.engine_on_gpu is None or bool(ctx.engine_on_gpu.value)
    source = open_source(
        cfg,
        on_fallback=lambda exc, frames: _fell_back(cfg, sender, exc, frames),
        engine_on_gpu=engine_on_gpu,
        device=ctx.cuda_device,
    )
    watchdog = Watchdog(on_stall)
    try:
        return _run(cfg, source, sender, writer, stop, watchdog)
    except SourceError as exc:
        message = redact(str(exc), cfg.url)
        log.error("%s", message)
        sender.send(StreamEvent(cfg.id, EVENT_ERROR, message))
        return EXIT_SOURCE_FAILED
    except Exception as exc:
        log.error("stream %r: source worker failed:\n%s", cfg.id, redact(traceback.format_exc(), cfg.url))
        sender.send(StreamEvent(cfg.id, EVENT_ERROR, redact(f"source worker failed: {exc!r}", cfg.url)))
        return EXIT_FAILURE
    finally:
        with (watchdog.guard if cfg.is_live else _unguarded)(
            "closing", cfg.open_timeout_s + WATCHDOG_GRACE_S
        ):
            source.close()
        watchdog.close()
        sender.send(SourceExit(cfg.id))  # first: a CUDA ring is freed only once the reader has unmapped it
        writer.close()
        sender.close()


def _fell_back(cfg: SourceConfig, sender: NotifySender, exc: Exception, frames: int) -> None:
    """NVDEC gave up on the stream: say so (the source already switched to the CPU decoder)."""
    reason = redact(str(exc), cfg.url).removeprefix(f"stream {cfg.id!r}: ")
    log.warning("stream %s: falling back to the CPU decoder after %d frame(s): %s", cfg.id, frames, reason)
    sender.send(
        StreamEvent(
            cfg.id,
            EVENT_FALLBACK,
            f"NVDEC cannot decode this stream ({reason}): decoding on the CPU",
            detail={"from": "nvdec", "to": "cpu", "reason": reason, "frames": frames},
        )
    )


def exit_stalled(stream: str, ctx: WorkerContext, what: str, limit_s: float) -> None:
    """The watchdog's verdict: the decoder is stuck in a call that cannot be interrupted. Exit now."""
    log.error(
        "stream %s: %s took more than %.0f s, past FFmpeg's own timeout; ending the source worker "
        "(exit code %d) for the supervisor to restart it",
        stream,
        what,
        limit_s,
        EXIT_SOURCE_STALLED,
    )
    # Let the log record reach the supervisor (the queue's feeder thread), but never wait long for it.
    flush = threading.Thread(target=_flush_log_queue, args=(ctx.log_queue,), daemon=True)
    flush.start()
    flush.join(2.0)
    os._exit(EXIT_SOURCE_STALLED)


def _flush_log_queue(queue: Any) -> None:
    with contextlib.suppress(Exception):
        queue.close()
        queue.join_thread()


class _Output:
    """Hands decoded frames over to the ring, counting those produced and dropped."""

    def __init__(
        self, cfg: SourceConfig, writer: RingWriter, sender: NotifySender, stop: StopFlag, live: bool
    ) -> None:
        self.cfg, self.writer, self.sender, self.stop, self.live = cfg, writer, sender, stop, live
        self.produced = self.dropped = 0
        self.metrics = source_metrics(cfg.id)
        self.prior = Prior()
        """What the next announced frame tells the inference worker of the frames before it."""

    def send(self, frame: Frame) -> None:
        prior = self.prior
        lost = hand_over(
            self.cfg.id, frame, self.writer, self.sender, self.live, self.stop, self.metrics, prior
        )
        if lost is None:
            self.produced += 1
            self.prior = Prior(frame.index)
            return
        if self.stop.is_set():
            return  # the frame in hand when asked to stop: not a drop
        self.prior = prior.dropped(lost)
        self.dropped += 1
        if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
            log.warning(
                "stream %s: %d frame(s) dropped because the inference worker is behind",
                self.cfg.id,
                self.dropped,
            )

    def event(self, kind: str, message: str, **detail: str | int | float) -> None:
        self.sender.send(StreamEvent(self.cfg.id, kind, message, detail=detail))


def _run(
    cfg: SourceConfig,
    source: FrameSource,
    sender: NotifySender,
    writer: RingWriter,
    stop: StopFlag,
    watchdog: Watchdog | None = None,
) -> int:
    out = _Output(cfg, writer, sender, stop, cfg.is_live or cfg.paced)
    if cfg.is_live:
        return _Live(cfg, source, out, stop, watchdog).run()
    info = source.open()
    _log_opened(cfg, info)
    out.event(EVENT_STARTED, _describe(info), **info.as_detail(), pid=os.getpid())
    pacer = Pacer(cfg.paced, cfg.fps_limit)
    for frame in _timed(source.frames(), out.metrics):
        if stop.is_set():
            log.info("stream %s: stopping after %d frames", cfg.id, out.produced)
            return EXIT_OK
        if not pacer.admit(frame.pts):
            continue
        pacer.wait(frame.pts, stop)
        if cfg.paced:  # played like a camera: the frame exists from when it is due (decoded ahead of that)
            frame.capture_time = time.time()
        out.send(frame)
    log.info("stream %s: end of stream after %d frames", cfg.id, out.produced)
    out.event(EVENT_EOS, f"end of stream after {out.produced} frames", frames=out.produced)
    return EXIT_OK


class _Frozen(Exception):
    """The picture has not changed for `held_s` seconds (raised inside the live loop only)."""

    def __init__(self, held_s: float) -> None:
        super().__init__(f"frozen picture: unchanged for {held_s:.1f} s (frozen_after_s)")
        self.held_s = held_s


class _Live:
    """A network stream across its connections: reconnects with backoff, reports down, up and frozen."""

    def __init__(
        self, cfg: SourceConfig, source: FrameSource, out: _Output, stop: StopFlag, watchdog: Watchdog | None
    ) -> None:
        self.cfg, self.source, self.out, self.stop = cfg, source, out, stop
        self.guard: Callable[[str, float], contextlib.AbstractContextManager[None]] = (
            watchdog.guard if watchdog is not None else _unguarded
        )
        self.backoff = Backoff(BackoffPolicy.from_config(cfg.reconnect))
        self.frozen = FrozenDetector(cfg.frozen_after_s) if cfg.frozen_after_s else None
        self.started = False
        self.next_index = 0
        """Index of the next frame: keeps counting across connections."""

    def run(self) -> int:
        log.info("stream %s: connecting to %s", self.cfg.id, self.cfg.display_url)
        while not self.stop.is_set():
            try:
                self._connection()
            except (SourceError, _Frozen) as exc:
                self._close()
                _sleep(self._failed(exc), self.stop)
        log.info("stream %s: stopping after %d frames", self.cfg.id, self.out.produced)
        return EXIT_OK

    def _connection(self) -> None:
        """Open the stream and hand its frames over until told to stop; raises when it fails."""
        cfg = self.cfg
        with self.guard("opening the stream", cfg.open_timeout_s + WATCHDOG_GRACE_S):
            info = self.source.open()
        _log_opened(cfg, info)
        if not self.started:
            self.out.event(EVENT_STARTED, _describe(info), **info.as_detail(), pid=os.getpid())
            self.started = True
        frames = _timed(self.source.frames(), self.out.metrics)
        try:
            self._pass_frames(frames, info, first=self.next_index)
        finally:
            close = getattr(frames, "close", None)  # a generator: end it before its container is closed
            if close is not None:
                close()

    def _pass_frames(self, frames: Iterator[Frame], info: SourceInfo, first: int) -> None:
        cfg = self.cfg
        # A camera delivers at its own rate: its frames are never delayed (that would only add latency),
        # only thinned to fps_limit. A new connection may restart the stream's clock: a new pacer.
        pacer = Pacer(False, cfg.fps_limit)
        while not self.stop.is_set():
            with self.guard("reading the stream", cfg.read_timeout_s + WATCHDOG_GRACE_S):
                frame = next(frames, None)
            if frame is None:
                raise SourceError(cfg.id, "the stream ended")
            frame.index += first
            self.next_index = frame.index + 1
            held = None
            if self.frozen is not None:
                held = self.frozen.update(_picture(frame), frame.pts)
            if self.backoff.failures and not (self.frozen is not None and self.frozen.carried):
                self._recovered(info)
            if held is not None:
                raise _Frozen(held)
            if pacer.admit(frame.pts):
                self.out.send(frame)

    def _close(self) -> None:
        with self.guard("closing the stream", self.cfg.open_timeout_s + WATCHDOG_GRACE_S):
            self.source.close()

    def _failed(self, exc: Exception) -> float:
        """Report a failure; the delay before the next attempt."""
        cfg = self.cfg
        reason = redact(str(exc), cfg.url).removeprefix(f"stream {cfg.id!r}: ")
        frozen = isinstance(exc, _Frozen)
        if isinstance(exc, _Frozen):
            log.warning("stream %s: %s", cfg.id, reason)
            self.out.event(
                EVENT_FROZEN,
                f"the picture has not changed for {exc.held_s:.1f} s",
                frozen_s=round(exc.held_s, 2),
            )
        if self.frozen is not None:
            # Until a new picture comes, a frozen stream has not recovered, even if frames flow again.
            self.frozen.reset(keep_picture=frozen or self.frozen.carried)
        retry = self.backoff.failed()
        self.out.metrics.reconnects.inc()
        if retry.went_down:
            log.error(
                "stream %s: down after %d failures in a row (%s); retrying every %g s",
                cfg.id, retry.attempt, reason, cfg.reconnect.down_retry_s,
            )  # fmt: skip
            self.out.event(
                EVENT_DOWN,
                f"down after {retry.attempt} failures in a row: {reason}",
                failures=retry.attempt, retry_s=cfg.reconnect.down_retry_s, reason=reason,
            )  # fmt: skip
        log.warning(
            "stream %s: %s; reconnecting in %.3g s (attempt %d)", cfg.id, reason, retry.delay_s, retry.attempt
        )
        self.out.event(
            EVENT_RECONNECTING,
            f"{reason}; reconnecting in {retry.delay_s:.3g} s (attempt {retry.attempt})",
            attempt=retry.attempt, delay_s=round(retry.delay_s, 3), reason=reason,
        )  # fmt: skip
        return retry.delay_s

    def _recovered(self, info: SourceInfo) -> None:
        recovery = self.backoff.succeeded()
        if recovery is None:
            return
        log.info(
            "stream %s: up again after %.1f s (%d failed attempt(s))",
            self.cfg.id, recovery.downtime_s, recovery.failures,
        )  # fmt: skip
        self.out.event(
            EVENT_UP,
            f"up again after {recovery.downtime_s:.1f} s ({recovery.failures} failed attempt(s))",
            downtime_s=round(recovery.downtime_s, 3), attempts=recovery.failures,
            was_down=int(recovery.was_down), **info.as_detail(),
        )  # fmt: skip


def _timed(frames: Iterator[Frame], metrics: SourceMetrics) -> Iterator[Frame]:
    """`frames`, counting each and timing the decoder call that produced it; closes `frames` when closed."""
    clock, pulse = time.perf_counter, heartbeat()
    decoded, decode_seconds = metrics.decoded, metrics.decode_seconds
    try:
        start = clock()
        for frame in frames:
            decode_seconds.observe(clock() - start)
            decoded.inc()
            pulse.beat()
            yield frame
            start = clock()
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


@contextlib.contextmanager
def _unguarded(what: str, limit_s: float) -> Iterator[None]:
    yield


def _sleep(seconds: float, stop: StopFlag) -> None:
    """Sleep, but return as soon as `stop` is set."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, _STOP_POLL_S))
        heartbeat().beat()


def _describe(info: SourceInfo) -> str:
    return f"{info.codec} {info.width}x{info.height}"


def _log_opened(cfg: SourceConfig, info: SourceInfo) -> None:
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


def _picture(frame: Frame) -> Any:
    """What the frozen-picture detector compares: the RGB frame, or a luma sample of a GPU frame."""
    if isinstance(frame, DeviceFrame):
        return frame.luma_sample() if frame.luma_sample is not None else None
    return frame.image
