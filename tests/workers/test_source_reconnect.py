"""The source worker's live loop: reconnecting, down/up/frozen events, frame indices across connections,
stopping during a backoff, the watchdog, and redaction of what the decoder says.

The source here follows a script (which connections fail, which frames come), so that the sequence of
events can be checked exactly and fast; `tests/test_rtsp.py` does the same through a real RTSP server.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from streamer.config import SourceConfig
from streamer.errors import EXIT_OK, EXIT_SOURCE_STALLED, SourceError
from streamer.messages import FrameReady, StreamEvent
from streamer.sources.base import DecodedFrame, SourceInfo
from streamer.sources.watchdog import Watchdog
from streamer.transport.notify import NotifyReceiver, NotifySender
from streamer.transport.ring import FrameRing
from streamer.workers import source as source_worker
from streamer.workers.common import StopFlag, WorkerContext
from streamer.workers.ring_writer import RingWriter
from streamer.workers.source import _run

SHAPE = (24, 32, 3)
URL = "rtsp://viewer:hunter2@cam.local/stream"
FAST = {
    "initial_s": 0.01,
    "max_s": 0.04,
    "multiplier": 2.0,
    "jitter": 0.0,
    "down_after": 3,
    "down_retry_s": 0.05,
}


def _picture(value: int) -> np.ndarray:
    image = np.full(SHAPE, 16, np.uint8)
    image[:, : SHAPE[1] // 2] = value  # the left half: a different picture for each value
    return image


class ScriptedSource:
    """A live source whose connections follow `script`: each item is an exception that `open` raises,
    or a list of ``(picture value, pts)`` frames that `frames` yields before the connection fails.
    When the script is over, it sets `stop` (the worker is asked to finish)."""

    def __init__(self, script: list[Exception | list[tuple[int, float]]], stop: StopFlag) -> None:
        self.stream_id = "cam1"
        self.info: SourceInfo | None = None
        self._script = deque(script)
        self._frames: list[tuple[int, float]] = []
        self._stop = stop
        self.opens = self.closes = 0

    def open(self) -> SourceInfo:
        self.opens += 1
        if not self._script:
            self._stop.set()
            raise SourceError(self.stream_id, "script over")
        step = self._script.popleft()
        if isinstance(step, Exception):
            raise step
        self._frames = step
        self.info = SourceInfo("h264", SHAPE[1], SHAPE[0], 10.0, "cpu")
        return self.info

    def frames(self) -> Iterator[DecodedFrame]:
        for i, (value, pts) in enumerate(self._frames):
            yield DecodedFrame(_picture(value), i, pts)
        raise SourceError(self.stream_id, "the stream ended (the server closed the connection)")

    def close(self) -> None:
        self.closes += 1


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[RingWriter]:
    writer = RingWriter(str(tmp_path), "cam1", slots=64)  # (read after the run: every frame must fit)
    yield writer
    writer.close()


def _run_script(
    script: list[Exception | list[tuple[int, float]]],
    pipe: tuple[NotifySender, NotifyReceiver],
    writer: RingWriter,
    stop: StopFlag,
    **cfg: object,
) -> tuple[list[StreamEvent | FrameReady], ScriptedSource]:
    """Run the worker's loop over `script`; every notification it sent, in order (slots released)."""
    sender, receiver = pipe
    config = SourceConfig.model_validate({"id": "cam1", "url": URL, "reconnect": FAST, **cfg})
    source = ScriptedSource(script, stop)
    assert _run(config, source, sender, writer, stop) == EXIT_OK
    got: list[StreamEvent | FrameReady] = []
    rings: dict[str, FrameRing] = {}
    while (msg := receiver.recv(0.5)) is not None:
        assert isinstance(msg, (StreamEvent, FrameReady))
        got.append(msg)
        if isinstance(msg, FrameReady):
            ring = rings.get(msg.ring) or rings.setdefault(msg.ring, FrameRing.attach(msg.ring))
            ring.release(msg.slot, msg.seq)
    for ring in rings.values():
        ring.close()
    return got, source


def _kinds(got: list[StreamEvent | FrameReady]) -> list[str]:
    return [m.kind if isinstance(m, StreamEvent) else f"frame {m.index}" for m in got]


def _frames(values: list[int], start_pts: float = 0.0) -> list[tuple[int, float]]:
    return [(v, start_pts + i * 0.1) for i, v in enumerate(values)]


def test_failures_back_off_go_down_once_and_come_back_up_with_indices_continuing(
    pipe: tuple[NotifySender, NotifyReceiver], writer: RingWriter, stop: StopFlag
) -> None:
    refused = ConnectionRefusedError(111, "Connection refused")
    script: list[Exception | list[tuple[int, float]]] = [
        SourceError("cam1", "cannot open: Connection refused"),
        SourceError("cam1", "cannot open: Connection refused"),
        SourceError("cam1", f"cannot open: {refused}"),
        SourceError("cam1", "no answer from the server in 10 s (open_timeout_s)"),
        _frames([100, 101, 102]),
        _frames([103, 104]),
    ]
    got, source = _run_script(script, pipe, writer, stop)
    assert _kinds(got) == [
        "reconnecting", "reconnecting", "down", "reconnecting", "reconnecting",
        "started", "up", "frame 0", "frame 1", "frame 2",
        "reconnecting", "up", "frame 3", "frame 4",
        "reconnecting", "reconnecting",  # the stream ended again; the script is over (and stop is set)
    ]  # fmt: skip
    events = [m for m in got if isinstance(m, StreamEvent)]
    retries = [e for e in events if e.kind == "reconnecting"]
    assert [e.detail["attempt"] for e in retries] == [1, 2, 3, 4, 1, 1, 2]
    assert [e.detail["delay_s"] for e in retries] == [0.01, 0.02, 0.05, 0.05, 0.01, 0.01, 0.02]  # down: slow
    assert retries[0].detail["reason"] == "cannot open: Connection refused"
    assert retries[0].message == "cannot open: Connection refused; reconnecting in 0.01 s (attempt 1)"
    down = next(e for e in events if e.kind == "down")
    assert down.detail == {
        "failures": 3,
        "retry_s": 0.05,
        "reason": "cannot open: [Errno 111] Connection refused",
    }
    ups = [e for e in events if e.kind == "up"]
    assert [(u.detail["attempts"], u.detail["was_down"]) for u in ups] == [(4, 1), (1, 0)]
    assert ups[0].detail["codec"] == "h264" and ups[0].detail["width"] == SHAPE[1]
    assert 0.1 <= float(ups[0].detail["downtime_s"]) < 2.0
    assert source.opens == source.closes == 7  # every failed connection is closed


def test_a_frozen_stream_is_reported_and_reconnected_and_is_up_only_once_the_picture_changes(
    pipe: tuple[NotifySender, NotifyReceiver], writer: RingWriter, stop: StopFlag
) -> None:
    script: list[Exception | list[tuple[int, float]]] = [
        _frames([50, 60] + [70] * 8),  # moves, then the same picture from pts 0.2 on
        _frames([70] * 8),  # after reconnecting: still the same picture (the camera is stuck)
        _frames([70, 80, 90]),  # a new picture: recovered
    ]
    got, _ = _run_script(script, pipe, writer, stop, frozen_after_s=0.5)
    assert _kinds(got) == [
        "started", *(f"frame {i}" for i in range(7)), "frozen", "reconnecting",
        # Frame 7 (pts 0.7), 0.5 s after the picture froze at frame 2, is the one reported (not handed over).
        *(f"frame {i}" for i in range(8, 13)), "frozen", "reconnecting",
        # The new connection's clock starts at 0: frozen again at its frame 5 (index 13).
        "frame 14", "up", "frame 15", "frame 16",
        # Frame 14 still shows the frozen picture: "up" comes with the first new one.
        "reconnecting", "reconnecting",
    ]  # fmt: skip
    events = [m for m in got if isinstance(m, StreamEvent)]
    frozen = [e for e in events if e.kind == "frozen"]
    assert [e.detail["frozen_s"] for e in frozen] == [0.5, 0.5]
    retries = [e for e in events if e.kind == "reconnecting"]
    assert [e.detail["attempt"] for e in retries[:2]] == [1, 2]  # still frozen: the backoff grows
    assert retries[0].detail["reason"] == "frozen picture: unchanged for 0.5 s (frozen_after_s)"
    up = next(e for e in events if e.kind == "up")
    assert up.detail["attempts"] == 2


def test_stop_interrupts_the_backoff(
    pipe: tuple[NotifySender, NotifyReceiver], writer: RingWriter, stop: StopFlag
) -> None:
    sender, _ = pipe
    cfg = SourceConfig(id="cam1", url=URL, reconnect={"initial_s": 60, "max_s": 60})  # type: ignore[arg-type]
    source = ScriptedSource([SourceError("cam1", "cannot open: Connection refused")], stop)
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        assert _run(cfg, source, sender, writer, stop) == EXIT_OK
    finally:
        timer.cancel()
    assert time.monotonic() - started < 1.5


def test_credentials_echoed_by_the_decoder_are_redacted(
    pipe: tuple[NotifySender, NotifyReceiver], writer: RingWriter, stop: StopFlag
) -> None:
    # FFmpeg's errors may quote the URL (its exception's filename): the worker redacts whatever it gets.
    script: list[Exception | list[tuple[int, float]]] = [
        SourceError("cam1", f"cannot open: [Errno 111] Connection refused: '{URL}'"),
        SourceError("cam1", "401 Unauthorized for user viewer with password hunter2"),
        SourceError("cam1", "cannot open rtsp://viewer:hunter2@cam.local/stream"),
    ]
    got, _ = _run_script(script, pipe, writer, stop)
    events = [m for m in got if isinstance(m, StreamEvent)]
    assert len(events) >= 3
    for event in events:
        assert "hunter2" not in event.message and all("hunter2" not in str(v) for v in event.detail.values())
    assert "rtsp://viewer:***@cam.local/stream" in events[0].message
    assert "password ***" in events[1].message


def test_a_decoder_call_that_blocks_past_its_timeout_trips_the_watchdog(
    pipe: tuple[NotifySender, NotifyReceiver],
    writer: RingWriter,
    stop: StopFlag,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(source_worker, "WATCHDOG_GRACE_S", 0.0)
    stalls: list[tuple[str, float]] = []

    def on_stall(what: str, limit: float) -> None:  # in the worker: log, then os._exit(EXIT_SOURCE_STALLED)
        stalls.append((what, limit))
        stop.set()

    class HangingSource(ScriptedSource):
        def open(self) -> SourceInfo:
            deadline = time.monotonic() + 5
            while not stop.is_set() and time.monotonic() < deadline:  # e.g. getaddrinfo on a dead DNS
                time.sleep(0.01)
            raise SourceError("cam1", "cannot open: Name or service not known")

    sender, _ = pipe
    cfg = SourceConfig(id="cam1", url=URL, open_timeout_s=0.2)
    watchdog = Watchdog(on_stall, poll_s=0.02)
    try:
        assert _run(cfg, HangingSource([], stop), sender, writer, stop, watchdog) == EXIT_OK
    finally:
        watchdog.close()
    assert stalls == [("opening the stream", 0.2)]


def _stall_in_child(queue: object) -> None:
    import logging.handlers

    logging.getLogger().addHandler(logging.handlers.QueueHandler(queue))  # type: ignore[arg-type]
    logging.getLogger().setLevel(logging.INFO)
    ctx = WorkerContext("", "", queue, "INFO", None, os.getppid())
    source_worker.exit_stalled("cam1", ctx, "reading the stream", 15.0)


def test_a_stalled_worker_logs_why_and_exits_with_its_own_code() -> None:
    import multiprocessing

    mp = multiprocessing.get_context("spawn")
    queue = mp.Queue()
    proc = mp.Process(target=_stall_in_child, args=(queue,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == EXIT_SOURCE_STALLED == 4
    record = queue.get(timeout=5)
    assert "stream cam1: reading the stream took more than 15 s" in record.getMessage()
    assert "exit code 4" in record.getMessage()
