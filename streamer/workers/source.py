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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamer.errors import EXIT_FAILURE, EXIT_OK, SourceError
from streamer.messages import (
    EVENT_DOWN,
    EVENT_EOS,
    EVENT_ERROR,
    EVENT_FALLBACK,
    EVENT_FROZEN,
    EVENT_RECONNECTING,
    EVENT_STARTED,
    EVENT_UP,
    FrameReady,
    SourceExit,
    StreamEvent,
)
from streamer.observability.metrics import DROP_NOTIFY_FULL, DROP_RING_FULL, SourceMetrics, source_metrics
from streamer.sources import DeviceFrame, Pacer, open_source, redact
from streamer.sources.frozen import FrozenDetector
from streamer.sources.reconnect import Backoff, BackoffPolicy
from streamer.sources.watchdog import Watchdog
from streamer.transport.notify import NotifySender
from streamer.transport.ring import FrameRing
from streamer.workers.common import (
    NO_PRIOR,
    Prior,
    StopFlag,
    WorkerContext,
    heartbeat,
    next_generation,
    start_worker,
    wait_for_slot,
)

if TYPE_CHECKING:
    from streamer.config import SourceConfig
    from streamer.sources.base import Frame, FrameSource, SourceInfo
    from streamer.workers.device_ring import DeviceRing

log = logging.getLogger(__name__)

# Exit code of a source worker that failed and already published its error event (no second report).
EXIT_SOURCE_FAILED = 3
# Exit code of a source worker whose decoder blocked past its timeouts (the watchdog ended it): a stuck
# network call, not a bug in the stream. Retryable: restart the worker.
EXIT_SOURCE_STALLED = 4
# How much longer than its own timeout a decoder call may take before the watchdog ends the worker.
WATCHDOG_GRACE_S = 10.0
# A reconnect delay is slept in steps of this, so that a stop request is noticed promptly.
_STOP_POLL_S = 0.1
# A file source waiting for a free slot polls the ring, backing off from 1 ms to 20 ms: prompt when
# inference is quick, and cheap (a few wake-ups per batch) when it is slow and the cores are shared.


class RingWriter:
    """Owns the stream's ring; re-creates it (a new generation) when a frame no longer fits.

    `epoch` (the supervisor's ``inference_epoch``, a shared integer) goes up when the inference worker is
    replaced: the frames announced to the dead one will never be released, so their slots are taken back.
    """

    def __init__(
        self, run_dir: str, stream_id: str, slots: int, epoch: Any = None, cuda_device: int = 0
    ) -> None:
        self._dir = Path(run_dir)
        self._cuda_device = cuda_device
        self._stream = stream_id
        self._slots = slots
        self._generation = 0
        self._epoch = epoch
        self._epoch_seen = epoch.value if epoch is not None else 0
        self.ring: FrameRing | None = None
        self.device: DeviceRing | None = None
        """The CUDA ring, for frames decoded by NVDEC (created on the first one)."""

    def reclaim_if_reader_replaced(self) -> int:
        """Free the slots held by a replaced inference worker; how many held a frame."""
        if self._epoch is None or self._epoch.value == self._epoch_seen:
            return 0
        self._epoch_seen = self._epoch.value
        if self.device is not None:
            self.device.reader_replaced()
        if self.ring is None:
            return 0
        held = self.ring.busy()
        for slot in range(self.ring.slots):
            self.ring.abandon(slot)  # (a frame announced to the new worker meanwhile fails its seq check)
        if held:
            log.info(
                "stream %s: took back %d frame slot(s) from the replaced inference worker", self._stream, held
            )
        return held

    def ring_for(self, nbytes: int) -> FrameRing:
        self.reclaim_if_reader_replaced()
        if self.ring is None or self.ring.slot_bytes < nbytes:
            if self.ring is not None:
                self.ring.close()  # its file stays until the supervisor removes the run directory
            self._generation = next_generation()
            # The pid makes every worker's rings new files: a restarted worker never truncates a file
            # that the inference worker still has mapped, and the supervisor can tell whose rings are dead.
            # (The generation counts per process: a stream restarted inside a decoder group gets new files.)
            path = self._dir / f"{self._stream}.{os.getpid()}.{self._generation}.ring"
            self.ring = FrameRing.create(path, self._slots, nbytes)
        return self.ring

    def device_ring(self) -> DeviceRing:
        if self.device is None:
            from streamer.workers.device_ring import DeviceRing

            self.device = DeviceRing(str(self._dir), self._stream, self._slots, self._cuda_device)
        return self.device

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.device is not None:
            self.device.close()
            self.device = None


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
        lost = _hand_over(
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


def _hand_over(
    stream: str,
    frame: Frame,
    writer: RingWriter,
    sender: NotifySender,
    live: bool,
    stop: StopFlag,
    metrics: SourceMetrics | None = None,
    prior: Prior = NO_PRIOR,
) -> str | None:
    """Copy `frame` into a free slot and announce it (with `prior`); None, or why it was dropped (a
    ``DROP_*`` reason, counted in `metrics`)."""
    if isinstance(frame, DeviceFrame):  # decoded by NVDEC: into the stream's CUDA ring
        from streamer.workers.device_ring import hand_over_device

        lost = hand_over_device(
            stream, frame, writer.device_ring(), sender, live, stop, writer.reclaim_if_reader_replaced, prior
        )
        if lost is not None and metrics is not None and not stop.is_set():  # (counted as for a CPU ring)
            (metrics.dropped_ring_full if lost == DROP_RING_FULL else metrics.dropped_notify_full).inc()
        return lost
    image = frame.image
    ring = writer.ring_for(image.nbytes)

    def reclaimed() -> bool:
        writer.reclaim_if_reader_replaced()  # (the reader holding the slots may have died)
        return True

    slot = wait_for_slot(ring.free_slot, live, stop, reclaimed)
    if slot is None:
        if live and metrics is not None and not stop.is_set():
            metrics.dropped_ring_full.inc()
        return DROP_RING_FULL  # (when stopping: not a drop of the pipeline's)
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
        after=prior.after,
        ring_full=prior.ring_full,
        notify_full=prior.notify_full,
    )
    if not sender.send(note):
        ring.abandon(slot)
        if metrics is not None:
            metrics.dropped_notify_full.inc()
        return DROP_NOTIFY_FULL
    return None
