"""The inference worker's last stage: finished batches → detections in source pixels → one message per frame.

`Results.collect` takes every finished batch from the executor, oldest first, decodes each image's output
(`streamer.postprocess.nms` for the grid layout — on the candidate rows the GPU kept, when it filtered them —
or `streamer.postprocess.end2end`), maps the boxes back through the frame's letterbox geometry, tracks them
where the stream's config says so (`streamer.workers.analysis`), and publishes one `DetectionsMessage` per
frame, in batch order; the stream's counters and metrics follow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from streamer.engine.device import OutputLayout
from streamer.engine.executor import Batch, Executor, Outputs
from streamer.messages import FrameReady
from streamer.observability.metrics import inference_metrics
from streamer.output.protocol import DetectionsMessage, detections_from_array
from streamer.output.publish import Publisher
from streamer.postprocess.end2end import decode_end2end
from streamer.postprocess.nms import NmsParams, detect_image, to_source_frame
from streamer.preprocess import LetterboxGeometry
from streamer.workers.analysis import Analysis
from streamer.workers.pictures import Pictures
from streamer.workers.streams import StreamBook


@dataclass
class Item:
    """One image of a batch in flight."""

    note: FrameReady
    geometry: LetterboxGeometry
    arrived: float
    """perf_counter time at which the frame's notification arrived."""


def decode(outputs: Outputs, executor: Executor, n: int, nms: NmsParams) -> list[np.ndarray]:
    """Per image of a finished batch: ``[K, 6]`` detections in model-input pixels."""
    if outputs.layout is OutputLayout.GRID:
        return [detect_image(outputs.grid_rows(i), nms) for i in range(n)]
    return decode_end2end(outputs.layout, executor.output_specs, outputs.tensors, n, nms)


class Results:
    def __init__(
        self,
        executor: Executor,
        publisher: Publisher,
        nms: NmsParams,
        class_names: tuple[str, ...],
        on_batch: Callable[[Batch, float, float], None] | None = None,
        analysis: Analysis | None = None,
        pictures: Pictures | None = None,
    ) -> None:
        self.executor = executor
        self.publisher = publisher
        self.nms = nms
        self.class_names = class_names
        self.metrics = inference_metrics()
        self.on_batch = on_batch
        """Called after each batch with (batch, decoded, published) perf_counter times (the timeline)."""
        self.analysis = analysis
        self.pictures = pictures

    def collect(self, book: StreamBook) -> int:
        """Post-process and publish every finished batch, oldest first; how many frames were published."""
        m, clock = self.metrics, time.perf_counter
        published = 0
        while (done := self.executor.done(timeout=0.0)) is not None:
            batch, outputs = done
            collected = clock()
            if batch.finished:
                m.infer_seconds.observe(batch.finished - batch.submitted)
            found_all = decode(outputs, self.executor, batch.size, self.nms)
            decoded = clock()
            nms_share = (decoded - collected) / max(1, batch.size)  # the batch's NMS, per frame
            start = decoded
            for item, found in zip(batch.items, found_all, strict=True):
                dets = to_source_frame(found, item.geometry)
                note = item.note
                per_stream = self.analysis.get(note.stream) if self.analysis is not None else None
                track_ids = per_stream.track(note, dets) if per_stream is not None else None
                msg = DetectionsMessage(
                    stream=note.stream, frame=note.index, pts=note.pts, capture_ts=note.capture_time,
                    width=note.width, height=note.height,
                    detections=detections_from_array(dets, self.class_names, track_ids),
                )  # fmt: skip
                built = clock()
                stream = book[note.stream]
                # Accounted for before it is sent: killed in between, the message is a gap in seq, never
                # a seq given twice.
                stream.published_frame(note.index, self.publisher.next_seq(note.stream))
                self.publisher.publish(msg)
                if track_ids is not None and per_stream is not None:
                    zones = per_stream.zone_message(note, dets, track_ids)
                    if zones is not None:
                        self.publisher.publish(zones)
                if self.pictures is not None:
                    self.pictures.published(note, dets, track_ids)
                sent = clock()
                m.postprocess_seconds.observe(nms_share + built - start)
                m.publish_seconds.observe(sent - built)
                start = sent
                stream.last_frame_time = msg.publish_ts
                stream.metrics.published.inc()
                stream.metrics.latency.observe(msg.publish_ts - note.capture_time)
            published += batch.size
            if self.on_batch is not None:
                self.on_batch(batch, decoded, clock())
        return published
