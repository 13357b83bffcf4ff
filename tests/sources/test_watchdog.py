"""The watchdog that ends a source worker stuck in a decoder call past every timeout."""

from __future__ import annotations

import threading
import time

from streamer.sources.watchdog import Watchdog


def test_a_block_within_its_limit_is_left_alone() -> None:
    stalls: list[tuple[str, float]] = []
    watchdog = Watchdog(lambda what, limit: stalls.append((what, limit)), poll_s=0.01)
    try:
        for _ in range(5):
            with watchdog.guard("reading", 0.3):
                time.sleep(0.05)
        time.sleep(0.4)  # nothing is guarded now: no deadline runs
    finally:
        watchdog.close()
    assert stalls == [] and not watchdog.fired


def test_a_block_past_its_limit_calls_on_stall_once_while_it_still_blocks() -> None:
    stalled = threading.Event()
    calls: list[tuple[str, float, float]] = []
    started = time.monotonic()

    def on_stall(what: str, limit: float) -> None:
        calls.append((what, limit, time.monotonic() - started))
        stalled.set()

    watchdog = Watchdog(on_stall, poll_s=0.02)
    try:
        with watchdog.guard("opening the stream", 0.2):
            assert stalled.wait(5), "the watchdog did not fire"  # (the block: a call that hangs)
            time.sleep(0.2)
    finally:
        watchdog.close()
    assert len(calls) == 1 and watchdog.fired
    what, limit, after = calls[0]
    assert (what, limit) == ("opening the stream", 0.2)
    assert 0.2 <= after < 1.0


def test_close_ends_the_thread() -> None:
    watchdog = Watchdog(lambda *_: None, poll_s=0.01)
    with watchdog.guard("x", 10):
        pass
    thread = watchdog._thread
    assert thread is not None and thread.is_alive()
    watchdog.close()
    assert not thread.is_alive()
