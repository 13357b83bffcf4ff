"""The inference worker: gather announced frames into batches, letterbox them, infer, NMS, publish.

One process per device. It binds the notification socket that every source worker connects to and owns
the ZeroMQ publisher, so that every stream's detections and events leave in order from one place:

    notifications ──► StreamBook (per-stream queues; a live stream keeps only its newest frame)
        ──► batch (full, or its oldest frame waited batch_timeout_ms)
        ──► FrameReader: letterbox into the executor slot's input (CPU rings: NumPy; CUDA rings: one
            kernel launch per batch), ring slots given back once read
        ──► Executor (in flight while the next batch is prepared)
        ──► Results: NMS, boxes to source pixels, one message per frame; then any event queued behind

`InferenceLoop` composes these parts; each owns one concern (`streams`, `ring_reader` / `cuda_ring_reader`,
`streamer.engine.executor`, `results`, `reporting`, `timeline`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from streamer.engine.executor import Executor
from streamer.engine.select import open_executor
from streamer.errors import EXIT_FAILURE, EXIT_OK, YolostreamError
from streamer.messages import (
    EVENT_ERROR,
    FrameReady,
    Notification,
    RingExport,
    Shutdown,
    SourceExit,
    StreamEvent,
)
from streamer.observability.metrics import DROP_STALE_SLOT, inference_metrics
from streamer.observability.picture import PICTURES_DIR
from streamer.observability.status import STATE_OF_EVENT, decoder_after
from streamer.output.protocol import event_message
from streamer.output.publish import Publisher
from streamer.postprocess.nms import serving_nms
from streamer.preprocess import LetterboxGeometry, letterbox_geometry
from streamer.transport.notify import NotifyReceiver
from streamer.transport.ring import StaleSlotError
from streamer.workers.analysis import Analysis
from streamer.workers.common import StopFlag, WorkerContext, heartbeat, start_worker
from streamer.workers.ledger import Ledger, ledger_dir
from streamer.workers.pictures import Pictures
from streamer.workers.reporting import Reporter, wait_for_previous_subscribers
from streamer.workers.results import Item, Results
from streamer.workers.ring_reader import FrameReader, HostFrames
from streamer.workers.streams import StreamBook, StreamState
from streamer.workers.timeline import Timeline

if TYPE_CHECKING:
    from streamer.config import Config
    from streamer.fleet.durable import DurableSink
    from streamer.workers.cuda_ring_reader import DeviceFrames

log = logging.getLogger(__name__)

# After Shutdown, how long to wait for the exits of sources whose last notifications may be in flight.
_EXIT_GRACE_S = 2.0
DROP_REPORT_S = 1.0
"""A stream's drops go out as one ``dropped`` event per this many seconds at most."""


class InferenceLoop:
    """The worker's loop, separate from process set-up so that it can be driven in-process by tests."""

    def __init__(
        self,
        cfg: Config,
        receiver: NotifyReceiver,
        publisher: Publisher,
        executor: Executor,
        stop: StopFlag | None = None,
        status_path: Path | None = None,
        ledger: Ledger | None = None,
    ) -> None:
        self.cfg = cfg
        self.receiver = receiver
        self.publisher = publisher
        self.executor = executor
        self.stop = stop
        spec = executor.spec
        self.max_batch = spec.max_batch
        self.timeout_s = cfg.engine.batch_timeout_ms / 1000
        self.swap_rb = cfg.model.channel_order == "bgr"  # rings hold RGB

        def resume(stream: StreamState) -> None:  # a replaced worker's stream, or one moved here from a
            if stream.record is not None:  # failed worker (engine.devices): its seq goes on, never back
                publisher.resume(stream.id, stream.record.next_seq)

        self.book = StreamBook(ledger, on_new=resume)
        names = _class_names(cfg, spec.num_classes)
        analysis = Analysis(cfg, names)
        self.pictures: Pictures | None = None
        """The streams' pictures, when the supervisor serves them (its run directory has ``pictures/``)."""
        if status_path is not None and (status_path.parent / PICTURES_DIR).is_dir():
            self.pictures = Pictures(status_path.parent / PICTURES_DIR, cfg, names, analysis)
        self.host_frames = HostFrames(executor, self.swap_rb, self.pictures)
        self.gpu_frames: DeviceFrames | None = None
        """The CUDA-ring side, created for the first NVDEC stream; None on the CPU path."""
        self.timeline = Timeline.from_env(executor)
        self.results = Results(
            executor, publisher, serving_nms(cfg.detection), names,
            on_batch=self.timeline.published if self.timeline is not None else None,
            analysis=analysis, pictures=self.pictures,
        )  # fmt: skip
        self.reporter = Reporter(cfg, self.book, publisher, status_path)
        self.metrics = inference_metrics()
        self._geometries: dict[tuple[int, int], LetterboxGeometry] = {}
        self._shutdown: Shutdown | None = None
        self._shutdown_at = 0.0
        self._drops_reported_at = 0.0

    @property
    def streams(self) -> dict[str, StreamState]:
        return self.book.streams

    @property
    def batch_sizes(self) -> dict[int, int]:
        """How many batches of each size were submitted (since start)."""
        return self.reporter.batch_sizes

    # -- main loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.receiver.socket, zmq.POLLIN)
        poller.register(self.executor.wake_fd, zmq.POLLIN)
        timeline, clock, pulse = self.timeline, time.perf_counter, heartbeat()
        while True:
            timeout = self._poll_timeout()
            t0 = clock()
            poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
            t1 = clock()
            self.executor.clear_wake()
            while (msg := self.receiver.recv_nowait()) is not None:
                self._accept(msg)
            self.book.drop_stale_live(self._release)  # at once, so that live sources get their slots back
            t2 = clock()
            if self.results.collect(self.book):
                pulse.warm()  # past the first batch (an engine may compile on it)
            t3 = clock()
            self._poll_frames()  # give back the ring slots whose kernels have run
            self._dispatch()
            t4 = clock()
            self._publish_events()
            self.reporter.tick()
            if self.pictures is not None:
                self.pictures.tick(t4)
            if timeline is not None:
                t5 = clock()
                for phase, seconds in zip(
                    ("poll", "accept", "collect", "dispatch", "other"),
                    (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4),
                    strict=True,
                ):
                    timeline.spent(phase, seconds)
                timeline.turn(t5)
            pulse.beat()
            if self._finished():
                self._report_drops()
                return

    def _poll_timeout(self) -> float | None:
        """How long to sleep: until the oldest frame's batch deadline, or a short tick to check stops."""
        timeout = 0.5
        oldest = self.book.oldest_arrival()
        if oldest is not None and self.executor.inflight == 0:
            timeout = min(timeout, max(0.0, oldest + self.timeout_s - time.perf_counter()))
        return timeout

    def _accept(self, msg: Notification) -> None:
        if isinstance(msg, FrameReady):
            self.book.add_frame(msg, time.perf_counter())
        elif isinstance(msg, StreamEvent):
            self.book.add_event(msg)
        elif isinstance(msg, SourceExit):
            self.book.get(msg.stream).exited = True
        elif isinstance(msg, RingExport):  # a source's CUDA frame ring (NVDEC): mapped once
            self.book.get(msg.stream).exited = False  # (from a new worker, as for a frame: see add_frame)
            self._device_frames().accept_export(msg)
        elif isinstance(msg, Shutdown):
            log.info("draining: finishing the frames already decoded")
            self._shutdown, self._shutdown_at = msg, time.monotonic()

    # -- batching ------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Form and submit batches while an executor slot is free and a batch is due."""
        while (slot := self.executor.free_slot()) is not None:
            waiting = self.book.waiting()
            if waiting == 0:
                return
            oldest = self.book.oldest_arrival()
            if oldest is None:
                return
            # A partial batch does not queue behind one in flight: it would wait a whole inference for
            # nothing, and a live stream will have a newer frame by then. Full batches do queue.
            timed_out = time.perf_counter() - oldest >= self.timeout_s and self.executor.inflight == 0
            if not (waiting >= self.max_batch or timed_out or self._draining()):
                return
            formed = time.perf_counter()
            items = self._fill(slot, self.book.oldest_frames(min(waiting, self.max_batch)))
            if not items:
                continue
            on_device = self.gpu_frames.take_batch(slot) if self.gpu_frames is not None else []
            filled = time.perf_counter()
            batch = self.executor.submit(slot, items, on_device)
            self.reporter.batch(len(items))
            if self.timeline is not None:
                self.timeline.submitted(batch, items, formed, filled)

    def _fill(self, slot: int, taken: list[tuple[StreamState, FrameReady, float]]) -> list[Item]:
        """Letterbox each frame from its ring slot into the slot's batch; the ring slots go back."""
        items: list[Item] = []
        clock, preprocess = time.perf_counter, self.metrics.preprocess_seconds
        for stream, note, arrived in taken:
            start = clock()
            geometry = self._geometry(note.width, note.height)
            try:
                self._reader(note).fill(slot, len(items), note, geometry)
            except StaleSlotError as exc:
                log.warning("stream %s: frame %d lost: %s", note.stream, note.index, exc)
                stream.batched.remove(note.index)
                stream.lost(note.index, note.index, {DROP_STALE_SLOT: 1})
                continue
            preprocess.observe(clock() - start)
            items.append(Item(note, geometry, arrived))
        return items

    def _geometry(self, width: int, height: int) -> LetterboxGeometry:
        g = self._geometries.get((width, height))
        if g is None:
            spec = self.executor.spec
            g = self._geometries[(width, height)] = letterbox_geometry(width, height, spec.width, spec.height)
        return g

    def _reader(self, note: FrameReady) -> FrameReader:
        return self._device_frames() if note.layout == "nv12" else self.host_frames

    def _device_frames(self) -> DeviceFrames:
        if self.gpu_frames is None:
            from streamer.workers.cuda_ring_reader import DeviceFrames

            self.gpu_frames = DeviceFrames(self.executor, self.swap_rb)
        return self.gpu_frames

    def _release(self, stream: StreamState, note: FrameReady) -> None:
        self._reader(note).release(note)

    def _poll_frames(self) -> None:
        if self.gpu_frames is not None:
            self.gpu_frames.poll()

    # -- events ------------------------------------------------------------------------------------

    def _publish_events(self) -> None:
        """Publish events whose earlier frames have all been published; close rings of exited streams."""
        for stream, event in self.book.due_events():
            self._report_drops(stream)  # first: a subscriber knows of every loss before, e.g., eos
            stream.set_state(
                STATE_OF_EVENT.get(event.kind, stream.state), decoder_after(event, stream.decoder)
            )
            self._publish_event(stream, event)
            if event.kind == EVENT_ERROR and self.gpu_frames is not None:
                self.gpu_frames.stream_gone(stream.id)  # its worker died: unmap its CUDA ring
        if time.monotonic() - self._drops_reported_at >= DROP_REPORT_S:
            self._drops_reported_at = time.monotonic()
            self._report_drops()
        for stream in self.book:
            if stream.exited and stream.idle:
                self.host_frames.stream_gone(stream.id)
                if self.gpu_frames is not None:
                    self.gpu_frames.stream_gone(stream.id)

    def _report_drops(self, only: StreamState | None = None) -> None:
        """Publish a ``dropped`` event for each stream (or `only`) that dropped frames since its last."""
        for stream in [only] if only is not None else list(self.book):
            event = stream.take_report()
            if event is not None:
                self._publish_event(stream, event)

    def _publish_event(self, stream: StreamState, event: StreamEvent) -> None:
        stream.sent(self.publisher.next_seq(stream.id))  # (first, as for detections: `Results.collect`)
        self.publisher.publish(event_message(event))

    # -- shutdown ------------------------------------------------------------------------------------

    def _draining(self) -> bool:
        return self._shutdown is not None or (self.stop is not None and self.stop.is_set())

    def _finished(self) -> bool:
        if self.stop is not None and self.stop.is_set() and self._shutdown is None:
            # Told to stop without the supervisor's Shutdown (SIGTERM sent to us directly, or the
            # supervisor died): drain what is here and go.
            self._shutdown, self._shutdown_at = Shutdown(), time.monotonic()
        if self._shutdown is None:
            return False
        streams = self.book.streams
        waiting_exits = [s for s in self._shutdown.expect_exits if not (s in streams and streams[s].exited)]
        if waiting_exits and time.monotonic() - self._shutdown_at < _EXIT_GRACE_S:
            return False
        return not (self.executor.inflight or self.book.busy())

    def close(self) -> None:
        if self.pictures is not None:
            self.pictures.close()
        self.reporter.close()
        self.host_frames.close()
        if self.gpu_frames is not None:
            self.gpu_frames.close()
        if self.timeline is not None:
            self.timeline.close()


def _class_names(cfg: Config, num_classes: int) -> tuple[str, ...]:
    names = cfg.model.effective_class_names
    if len(names) == num_classes:
        return names
    if cfg.model.class_names is not None:
        raise YolostreamError(
            f"model.class_names has {len(names)} names but the model predicts {num_classes} classes"
        )
    log.warning(
        "the model predicts %d classes, not COCO's 80, and model.class_names is not set: "
        "classes are named by their index",
        num_classes,
    )
    return tuple(str(i) for i in range(num_classes))


def open_durable_sink(cfg: Config) -> DurableSink | None:
    """The JetStream mirror of the published messages in fleet mode (``fleet.durable``), else None."""
    if cfg.fleet is None or not cfg.fleet.durable:
        return None
    from streamer.fleet.durable import DurableSink
    from streamer.fleet.member import daemon_name  # (no NATS: a name only)

    return DurableSink(cfg.fleet, daemon_name(cfg.fleet), cfg.publish.encoding)


def run_inference(cfg: Config, model: Path, ctx: WorkerContext, ready: object) -> int:
    """Process entry point: load the engine, bind the sockets, signal `ready`, loop until told to stop."""
    stop = start_worker(ctx)
    receiver = publisher = executor = loop = ledger = durable = None
    try:
        receiver = NotifyReceiver(ctx.notify_endpoint)
        durable = open_durable_sink(cfg)
        publisher = Publisher.from_config(cfg.publish, mirror=durable)  # (reads the CURVE key files, if any)
        executor = open_executor(cfg, model)
        if ctx.engine_on_gpu is not None:  # set before `ready`: the sources start after it (WorkerContext)
            ctx.engine_on_gpu.value = int(executor.on_gpu)
        ledger, status_path = Ledger(ledger_dir(ctx.run_dir)), Path(ctx.run_dir) / "status.json"
        wait_for_previous_subscribers(publisher, status_path)
        loop = InferenceLoop(cfg, receiver, publisher, executor, stop, status_path, ledger)
        ready.set()  # type: ignore[attr-defined]
        loop.run()
        log.info(
            "inference worker done: %d frames published, %d dropped",
            sum(s.published for s in loop.book), sum(s.dropped for s in loop.book),
        )  # fmt: skip
        return EXIT_OK
    except YolostreamError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except Exception:
        log.exception("inference worker failed")
        return EXIT_FAILURE
    finally:
        if loop is not None:
            loop.close()
        if ledger is not None:
            ledger.close()
        if executor is not None:
            executor.close()
        if publisher is not None:
            publisher.close()
        if durable is not None:
            durable.close()
            log.info("durable detections: %d stored in JetStream, %d dropped", durable.acked, durable.dropped)
        if receiver is not None:
            receiver.close()
