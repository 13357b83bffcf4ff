"""The inference worker: gather announced frames into batches, letterbox them, infer, NMS, publish.

One process per device. It binds the notification socket that every source worker connects to, maps
each stream's frame ring on first use, and owns the ZeroMQ publisher, so that every stream's detections
and events leave in order from one place:

    notifications ──► per-stream queues ──► batch (full, or oldest frame waited batch_timeout_ms)
        ──► letterbox from the ring slot into the executor's input buffer, slot released
        ──► engine (in flight while the next batch is prepared) ──► NMS, boxes to source pixels
        ──► publish one message per frame; then any event queued behind those frames

Live streams never queue: when a batch is formed, only the newest waiting frame of a live stream is
taken and the older ones are dropped (counted and reported).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from streamer.engine.device import OutputLayout
from streamer.engine.executor import Executor
from streamer.engine.select import open_executor
from streamer.errors import EXIT_FAILURE, EXIT_OK, YolostreamError
from streamer.messages import (
    EVENT_DROPPED,
    EVENT_ERROR,
    FrameReady,
    Notification,
    RingExport,
    Shutdown,
    SourceExit,
    StreamEvent,
)
from streamer.metrics import StreamMetrics, gpu_memory, gpu_memory_gauges, inference_metrics
from streamer.postprocess import NmsParams, detect_image, to_source_frame
from streamer.postprocess_end2end import decode_end2end
from streamer.preprocess import LetterboxGeometry, letterbox, letterbox_geometry, to_input_tensor
from streamer.protocol import DetectionsMessage, detections_from_array, event_message
from streamer.publish import Publisher
from streamer.status import STATE_OF_EVENT, RunStatus, StreamStatus, decoder_after, write_status
from streamer.transport.notify import NotifyReceiver
from streamer.transport.ring import FrameRing, StaleSlotError
from streamer.workers.common import StopFlag, WorkerContext, start_worker

if TYPE_CHECKING:
    from streamer.config import Config

log = logging.getLogger(__name__)

# After Shutdown, how long to wait for the exits of sources whose last notifications may be in flight.
_EXIT_GRACE_S = 2.0


@dataclass
class _Stream:
    """What the worker knows of one stream."""

    id: str
    queue: deque[FrameReady | StreamEvent] = field(default_factory=deque)
    arrivals: deque[float] = field(default_factory=deque)  # monotonic arrival time of each queued frame
    rings: dict[str, FrameRing] = field(default_factory=dict)
    inflight: int = 0
    published: int = 0
    dropped: int = 0
    dropped_reported: int = 0
    exited: bool = False
    state: str = "starting"
    decoder: str = ""
    last_frame_time: float = 0.0
    metrics: StreamMetrics = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.metrics = inference_metrics().stream(self.id)

    def frames_waiting(self) -> int:
        """Frames at the head of the queue, before any event (events wait for the frames before them)."""
        n = 0
        for item in self.queue:
            if not isinstance(item, FrameReady):
                break
            n += 1
        return n

    def close_rings(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings.clear()


@dataclass
class _Item:
    """One image of a batch in flight."""

    note: FrameReady
    geometry: LetterboxGeometry


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
    ) -> None:
        self.cfg = cfg
        self.receiver = receiver
        self.publisher = publisher
        self.executor = executor
        self.stop = stop
        self.status_path = status_path
        self._status_at = 0.0
        spec = executor.engine.spec
        self.input_w, self.input_h = spec.width, spec.height
        self.max_batch = spec.max_batch
        self.timeout_s = cfg.engine.batch_timeout_ms / 1000
        self.swap_rb = cfg.model.channel_order == "bgr"  # rings hold RGB
        self.class_names = _class_names(cfg, spec.num_classes)
        det = cfg.detection
        self.nms = NmsParams(
            conf_thres=det.confidence,
            iou_thres=det.iou,
            max_det=det.max_detections,
            classes=det.class_ids,
            agnostic=det.agnostic_nms,
            multi_label=det.multi_label,
        )
        self.streams: dict[str, _Stream] = {}
        self.gpu_frames: Any = None
        """`GpuFrames` once a source sends frames in GPU memory (NVDEC); None on the CPU path."""
        self._canvas = np.empty((spec.height, spec.width, 3), np.uint8)
        self._geometries: dict[tuple[int, int], LetterboxGeometry] = {}
        self._shutdown: Shutdown | None = None
        self._shutdown_at = 0.0
        self._stats_at = time.monotonic()
        self._stats_published = 0
        self.batch_sizes: Counter[int] = Counter()
        """How many batches of each size were submitted (since start)."""
        self._stats_batches: Counter[int] = Counter()
        self.metrics = inference_metrics()
        self._overflows_counted = 0
        self._gpu = gpu_memory() is not None

    # -- main loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.receiver.socket, zmq.POLLIN)
        poller.register(self.executor.wake_fd, zmq.POLLIN)
        while True:
            timeout = self._poll_timeout()
            poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
            self.executor.clear_wake()
            while (msg := self.receiver.recv_nowait()) is not None:
                self._accept(msg)
            self._drop_stale_live_frames()  # at once, so that live sources get their slots back
            self._collect()
            if self.gpu_frames is not None:
                self.gpu_frames.poll()  # give back the CUDA-ring slots whose kernels have run
            self._dispatch()
            self._publish_events()
            self._count_overflows()
            self._maybe_log_stats()
            self._maybe_write_status()
            if self._finished():
                return

    def _poll_timeout(self) -> float | None:
        """How long to sleep: until the oldest frame's batch deadline, or a short tick to check stops."""
        timeout = 0.5
        oldest = min((s.arrivals[0] for s in self.streams.values() if s.arrivals), default=None)
        if oldest is not None and self.executor.inflight == 0:
            timeout = min(timeout, max(0.0, oldest + self.timeout_s - time.monotonic()))
        return timeout

    def _accept(self, msg: Notification) -> None:
        if isinstance(msg, Shutdown):
            log.info("draining: finishing the frames already decoded")
            self._shutdown, self._shutdown_at = msg, time.monotonic()
            return
        if isinstance(msg, RingExport):  # a source's CUDA frame ring (NVDEC): mapped once
            self._gpu_frames().accept_export(msg)
            return
        stream = self.streams.get(msg.stream)
        if stream is None:
            stream = self.streams[msg.stream] = _Stream(msg.stream)
        if isinstance(msg, SourceExit):
            stream.exited = True
        elif isinstance(msg, FrameReady):
            stream.queue.append(msg)
            stream.arrivals.append(time.monotonic())
        else:
            stream.queue.append(msg)

    # -- batching ------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Form and submit batches while an executor slot is free and a batch is due."""
        while (slot := self.executor.free_slot()) is not None:
            waiting = sum(s.frames_waiting() for s in self.streams.values())
            if waiting == 0:
                return
            oldest = min(s.arrivals[0] for s in self.streams.values() if s.arrivals)
            # A partial batch does not queue behind one in flight: it would wait a whole inference for
            # nothing, and a live stream will have a newer frame by then. Full batches do queue.
            timed_out = time.monotonic() - oldest >= self.timeout_s and self.executor.inflight == 0
            due = waiting >= self.max_batch or timed_out or self._draining()
            if not due:
                return
            items = self._fill(slot, self._take(min(waiting, self.max_batch)))
            if items:
                on_device = self.gpu_frames.take_batch(slot) if self.gpu_frames is not None else []
                if on_device:  # frames letterboxed on the GPU by the CUDA kernel (from NVDEC)
                    gpu_executor: Any = self.executor  # (the CudaExecutor: only it has device inputs)
                    gpu_executor.submit(slot, items, on_device=on_device)
                else:
                    self.executor.submit(slot, items)
                self.batch_sizes[len(items)] += 1
                self.metrics.batch_size.observe(len(items))

    def _take(self, n: int) -> list[tuple[_Stream, FrameReady]]:
        """The `n` oldest waiting frames across streams (each stream's frames stay in order)."""
        taken: list[tuple[_Stream, FrameReady]] = []
        while len(taken) < n:
            heads = [s for s in self.streams.values() if s.queue and isinstance(s.queue[0], FrameReady)]
            if not heads:
                break
            stream = min(heads, key=lambda s: s.arrivals[0])
            note = stream.queue.popleft()
            stream.arrivals.popleft()
            taken.append((stream, note))  # type: ignore[arg-type]
        return taken

    def _drop_stale_live_frames(self) -> None:
        """Keep only the newest waiting frame of each live stream; release and count the others."""
        for stream in self.streams.values():
            while (
                stream.frames_waiting() > 1
                and isinstance(stream.queue[0], FrameReady)
                and stream.queue[0].live
            ):
                note = stream.queue.popleft()
                stream.arrivals.popleft()
                self._release(stream, note)  # type: ignore[arg-type]
                stream.dropped += 1
                stream.metrics.dropped_behind.inc()

    def _fill(self, slot: int, taken: list[tuple[_Stream, FrameReady]]) -> list[_Item]:
        """Letterbox each frame from its ring slot into the batch buffer; release the slots."""
        buffer = self.executor.buffers[slot]
        items: list[_Item] = []
        clock, preprocess = time.perf_counter, self.metrics.preprocess_seconds
        for stream, note in taken:
            start = clock()
            if note.layout == "nv12":  # in GPU memory: the CUDA kernel (or the host, for a CPU engine)
                geometry = self._geometry(note.width, note.height)
                try:
                    self._gpu_frames().fill(slot, len(items), note, geometry, buffer[len(items)])
                except StaleSlotError as exc:
                    log.warning("stream %s: frame %d lost: %s", note.stream, note.index, exc)
                    stream.dropped += 1
                    stream.metrics.dropped_stale.inc()
                    continue
                preprocess.observe(clock() - start)
                stream.inflight += 1
                items.append(_Item(note, geometry))
                continue
            ring = self._ring(stream, note)
            try:
                if ring is None:
                    raise StaleSlotError(f"ring {note.ring} is gone")
                ring.check(note.slot, note.seq)
                image = ring.view(note.slot, (note.height, note.width, 3))
                geometry = self._geometry(note.width, note.height)
                letterbox(image, self.input_w, self.input_h, out=self._canvas)
                del image  # the ring must hold no view of its memory when it is closed
                to_input_tensor(self._canvas, swap_rb=self.swap_rb, out=buffer[len(items)])
                ring.check(note.slot, note.seq)  # the pixels were not overwritten while we read them
            except StaleSlotError as exc:
                log.warning("stream %s: frame %d lost: %s", note.stream, note.index, exc)
                stream.dropped += 1
                stream.metrics.dropped_stale.inc()
                continue
            finally:
                if ring is not None:
                    ring.release(note.slot, note.seq)
            preprocess.observe(clock() - start)
            stream.inflight += 1
            items.append(_Item(note, geometry))
        return items

    def _ring(self, stream: _Stream, note: FrameReady) -> FrameRing | None:
        ring = stream.rings.get(note.ring)
        if ring is None:
            try:
                ring = stream.rings[note.ring] = FrameRing.attach(note.ring)
            except (OSError, ValueError) as exc:
                log.error("stream %s: cannot map frame ring %s: %s", stream.id, note.ring, exc)
                return None
        return ring

    def _geometry(self, width: int, height: int) -> LetterboxGeometry:
        g = self._geometries.get((width, height))
        if g is None:
            g = self._geometries[(width, height)] = letterbox_geometry(
                width, height, self.input_w, self.input_h
            )
        return g

    def _gpu_frames(self) -> Any:
        """The CUDA-ring side (`streamer.workers.gpu_frames`), created for the first NVDEC stream."""
        if self.gpu_frames is None:
            from streamer.workers.gpu_frames import GpuFrames

            self.gpu_frames = GpuFrames(self.executor, self.input_w, self.input_h, self.swap_rb)
        return self.gpu_frames

    def _release(self, stream: _Stream, note: FrameReady) -> None:
        if note.layout == "nv12":
            self._gpu_frames().release(note)
            return
        ring = self._ring(stream, note)
        if ring is not None:
            ring.release(note.slot, note.seq)

    # -- results -----------------------------------------------------------------------------------

    def _collect(self) -> None:
        """Post-process and publish every finished batch, oldest first."""
        m, clock = self.metrics, time.perf_counter
        while (done := self.executor.done(timeout=0.0)) is not None:
            batch, outputs = done
            if batch.finished:
                m.infer_seconds.observe(batch.finished - batch.submitted)
            start = clock()
            found_all = self._decode(outputs, batch.size)
            decoded = clock()
            nms_share = (decoded - start) / max(1, batch.size)  # the batch's NMS, per frame
            start = decoded
            for item, found in zip(batch.items, found_all, strict=True):
                dets = to_source_frame(found, item.geometry)
                note = item.note
                msg = DetectionsMessage(
                    stream=note.stream, frame=note.index, pts=note.pts, capture_ts=note.capture_time,
                    width=note.width, height=note.height,
                    detections=detections_from_array(dets, self.class_names),
                )  # fmt: skip
                built = clock()
                self.publisher.publish(msg)
                sent = clock()
                m.postprocess_seconds.observe(nms_share + built - start)
                m.publish_seconds.observe(sent - built)
                start = sent
                stream = self.streams[note.stream]
                stream.inflight -= 1
                stream.published += 1
                stream.last_frame_time = msg.publish_ts
                stream.metrics.published.inc()
                stream.metrics.latency.observe(msg.publish_ts - note.capture_time)

    def _decode(self, outputs: np.ndarray | dict[str, np.ndarray], n: int) -> list[np.ndarray]:
        """Per image of a finished batch: ``[K, 6]`` detections in model-input pixels."""
        engine: Any = self.executor.engine  # an Engine (CPU executor) or a DeviceEngine (CUDA executor)
        layout = getattr(engine, "layout", OutputLayout.GRID)
        if layout is OutputLayout.GRID:
            raw = outputs if isinstance(outputs, np.ndarray) else outputs[engine.outputs[0].name]
            return [detect_image(raw[i], self.nms) for i in range(n)]
        return decode_end2end(layout, engine.outputs, outputs, n, self.nms)  # type: ignore[arg-type]

    def _publish_events(self) -> None:
        """Publish events whose earlier frames have all been published; close rings of exited streams."""
        for stream in self.streams.values():
            while stream.queue and isinstance(stream.queue[0], StreamEvent) and stream.inflight == 0:
                event: StreamEvent = stream.queue.popleft()  # type: ignore[assignment]
                stream.state = STATE_OF_EVENT.get(event.kind, stream.state)
                stream.decoder = decoder_after(event, stream.decoder)
                self.publisher.publish(event_message(event))
                if event.kind == EVENT_ERROR and self.gpu_frames is not None:
                    self.gpu_frames.stream_gone(stream.id)  # its worker died: unmap its CUDA ring
            if stream.dropped > stream.dropped_reported and self._stats_due():
                n = stream.dropped - stream.dropped_reported
                stream.dropped_reported = stream.dropped
                self.publisher.publish(
                    event_message(
                        StreamEvent(
                            stream.id,
                            EVENT_DROPPED,
                            f"{n} frame(s) dropped: inference is behind",
                            detail={"dropped": n, "dropped_total": stream.dropped},
                        )
                    )
                )
            if stream.exited and not stream.queue and stream.inflight == 0 and stream.rings:
                stream.close_rings()
            if stream.exited and not stream.queue and stream.inflight == 0 and self.gpu_frames is not None:
                self.gpu_frames.stream_gone(stream.id)

    # -- shutdown and stats ------------------------------------------------------------------------

    def _draining(self) -> bool:
        return self._shutdown is not None or (self.stop is not None and self.stop.is_set())

    def _finished(self) -> bool:
        if self.stop is not None and self.stop.is_set() and self._shutdown is None:
            # Told to stop without the supervisor's Shutdown (SIGTERM sent to us directly, or the
            # supervisor died): drain what is here and go.
            self._shutdown, self._shutdown_at = Shutdown(), time.monotonic()
        if self._shutdown is None:
            return False
        waiting_exits = [
            s for s in self._shutdown.expect_exits if not (s in self.streams and self.streams[s].exited)
        ]
        if waiting_exits and time.monotonic() - self._shutdown_at < _EXIT_GRACE_S:
            return False
        busy = self.executor.inflight or any(s.queue for s in self.streams.values())
        return not busy

    def _count_overflows(self) -> None:
        """Add the publisher's new overflows (messages some subscriber missed) to their metric."""
        overflows = self.publisher.dropped
        if overflows != self._overflows_counted:
            self.metrics.publish_overflows.inc(overflows - self._overflows_counted)
            self._overflows_counted = overflows

    def _sample_gauges(self) -> None:
        self.metrics.subscriptions.set(self.publisher.subscribers)
        if self._gpu and (memory := gpu_memory()) is not None:
            used, total = gpu_memory_gauges()
            used.set(memory[0])
            total.set(memory[1])

    def _maybe_write_status(self) -> None:
        """Every second, the state of every stream for the supervisor (`streamer.status`), and the gauges."""
        now = time.monotonic()
        if now - self._status_at < 1.0:
            return
        self._status_at = now
        self._sample_gauges()
        if self.status_path is None:
            return
        streams = {
            s.id: StreamStatus(s.state, s.published, s.dropped, s.last_frame_time, s.decoder)
            for s in self.streams.values()
        }
        published = sum(s.published for s in self.streams.values())
        write_status(
            self.status_path,
            RunStatus(published=published, batches=sum(self.batch_sizes.values()), streams=streams),
        )

    def _stats_due(self) -> bool:
        interval = self.cfg.logging.stats_interval_s
        return interval > 0 and time.monotonic() - self._stats_at >= interval

    def _maybe_log_stats(self) -> None:
        if not self._stats_due():
            return
        now = time.monotonic()
        elapsed = now - self._stats_at
        total = sum(s.published for s in self.streams.values())
        per_stream = ", ".join(f"{s.id} {s.published}" for s in self.streams.values())
        recent = self.batch_sizes - self._stats_batches
        batches = sum(recent.values())
        batch = sum(size * n for size, n in recent.items()) / batches if batches else 0.0
        log.info(
            "%.1f frames/s published (%d in %.1f s; totals: %s); mean batch %.2f; %d subscription(s)",
            (total - self._stats_published) / elapsed,
            total - self._stats_published,
            elapsed,
            per_stream,
            batch,
            self.publisher.subscribers,
        )
        self._stats_at, self._stats_published = now, total
        self._stats_batches = self.batch_sizes.copy()

    def close(self) -> None:
        self._count_overflows()
        for stream in self.streams.values():
            stream.close_rings()
        if self.gpu_frames is not None:
            self.gpu_frames.close()


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


def run_inference(cfg: Config, model: Path, ctx: WorkerContext, ready: object) -> int:
    """Process entry point: load the engine, bind the sockets, signal `ready`, loop until told to stop."""
    stop = start_worker(ctx)
    receiver = publisher = executor = loop = None
    try:
        receiver = NotifyReceiver(ctx.notify_endpoint)
        publisher = Publisher.from_config(cfg.publish)  # (reads the CURVE key files, if any)
        executor = open_executor(cfg, model)
        if ctx.engine_on_gpu is not None:  # set before `ready`: the sources start after it (WorkerContext)
            ctx.engine_on_gpu.value = int(hasattr(executor, "device_input"))
        loop = InferenceLoop(cfg, receiver, publisher, executor, stop, Path(ctx.run_dir) / "status.json")
        ready.set()  # type: ignore[attr-defined]
        loop.run()
        log.info(
            "inference worker done: %d frames published, %d dropped",
            sum(s.published for s in loop.streams.values()),
            sum(s.dropped for s in loop.streams.values()),
        )
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
        if executor is not None:
            executor.close()
            executor.engine.close()
        if publisher is not None:
            publisher.close()
        if receiver is not None:
            receiver.close()
