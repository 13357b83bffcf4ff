"""The systemd notification protocol (sd_notify), without libsystemd: one datagram per state change.

Does nothing when ``NOTIFY_SOCKET`` is not set (not under systemd, or ``Type=`` is not ``notify``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class SystemdNotifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address
        self._sock: socket.socket | None = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        pid = env.get("WATCHDOG_PID")
        for_us = pid is None or pid == str(os.getpid())
        self.watchdog_interval = usec / 2e6 if usec and for_us and self._sock else None
        """Seconds between WATCHDOG=1 pings (half of systemd's WatchdogSec), or None: no watchdog."""

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError as exc:  # systemd gone or socket full: never fatal for the daemon
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def loading(self, extend_s: float) -> None:
        """Still loading the model: push the start (or reload) timeout `extend_s` on and feed the watchdog."""
        self.notify(
            f"EXTEND_TIMEOUT_USEC={int(extend_s * 1e6)}", *(["WATCHDOG=1"] if self.watchdog_interval else [])
        )

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload units match the reload with this message.
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
