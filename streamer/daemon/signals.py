"""The supervisor's inbox: signals, which handlers only record and which wake the main loop
(`signal.set_wakeup_fd`), and pokes from its other threads. The loop acts on both between its other
checks, so no handler runs daemon code."""

from __future__ import annotations

import contextlib
import signal
import socket
from types import TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HANDLED = (*STOP_SIGNALS, signal.SIGHUP)


class SignalInbox:
    """While entered: SIGINT, SIGTERM and SIGHUP are recorded, and `wake` becomes readable when one
    comes or another thread pokes."""

    def __init__(self) -> None:
        self._got: list[int] = []
        self.wake: socket.socket | None = None
        """What the main loop waits on (with its workers' sentinels) while entered."""
        self._wake_w: socket.socket | None = None
        self._old_wakeup = -1
        self._old_handlers: dict[int, Any] = {}

    def __enter__(self) -> SignalInbox:
        self.wake, self._wake_w = socket.socketpair()
        self.wake.setblocking(False)
        self._wake_w.setblocking(False)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w.fileno())
        self._old_handlers = {sig: signal.signal(sig, self._record) for sig in HANDLED}
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        for sock in (self.wake, self._wake_w):
            if sock is not None:
                sock.close()
        self.wake = self._wake_w = None

    def _record(self, signum: int, _frame: object) -> None:
        self._got.append(signum)

    def take(self) -> list[int]:
        """The signals received since the last call, oldest first (the wake-up bytes drained)."""
        if self.wake is not None:
            with contextlib.suppress(BlockingIOError):
                while self.wake.recv(64):
                    pass
        got, self._got = self._got, []
        return got

    def poke(self) -> None:
        """Wake the main loop from another thread (e.g. the fleet's: the leased cameras changed)."""
        sock = self._wake_w  # (read once: the main thread may be closing it)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.send(b"\0")

    def stopping(self) -> bool:
        """A stop signal has come and not been taken yet (asked while waiting for a worker to start)."""
        return any(s in STOP_SIGNALS for s in self._got)
