"""A last resort against a decoder call that blocks past every timeout FFmpeg was given.

PyAV's ``timeout=(open, read)`` interrupts FFmpeg's network I/O (measured: a silent server fails the open
after ``open`` seconds, a stalled stream fails a read), but not everything is interruptible: a host name
is resolved by a blocking ``getaddrinfo`` (a dead DNS server holds it for tens of seconds), and a buggy
demuxer may loop. A blocked FFmpeg call cannot be cancelled from Python, and closing its container from
another thread would crash the process. So the source worker runs each call under `Watchdog.guard`, and
when one lasts longer than its limit the watchdog calls `on_stall`, which makes the worker exit with a
distinct code (`streamer.errors.EXIT_SOURCE_STALLED`) for the supervisor to restart it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Watchdog:
    """Calls ``on_stall(what, limit_s)`` from its own thread when a `guard`-ed block outlives its limit.

    `on_stall` is called at most once; it normally does not return (it ends the process).
    """

    def __init__(self, on_stall: Callable[[str, float], None], poll_s: float = 0.25) -> None:
        self._on_stall = on_stall
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._what = ""
        self._limit = 0.0
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired = False

    @contextmanager
    def guard(self, what: str, limit_s: float) -> Iterator[None]:
        """Watch the block: `on_stall` if it takes longer than `limit_s` seconds."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="source-watchdog", daemon=True)
            self._thread.start()
        with self._lock:
            self._deadline, self._what, self._limit = time.monotonic() + limit_s, what, limit_s
        try:
            yield
        finally:
            with self._lock:
                self._deadline = None

    def _watch(self) -> None:
        while not self._closed.wait(self._poll_s):
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                what, limit = self._what, self._limit
                if late:
                    self._deadline = None
            if late:
                self.fired = True
                self._on_stall(what, limit)
                return

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
