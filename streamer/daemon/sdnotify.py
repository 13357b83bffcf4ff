"""The systemd notification protocol (sd_notify), without libsystemd: one datagram per state change.

Does nothing when ``NOTIFY_SOCKET`` is not set (not under systemd, or ``Type=`` is not ``notify``).
`SystemdReport` decides what the supervisor's loop tells systemd, and when: STATUS=, WATCHDOG=1 and the
start timeout's extension while the model loads.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.observability.status import RunStatus

log = logging.getLogger(__name__)

STATUS_EVERY_S = 5.0
"""STATUS= (the streams' states) at most this often."""
LOADING_EVERY_S = 5.0
LOADING_EXTEND_S = 30.0
"""While the model loads, systemd's start timeout is extended by this much every `LOADING_EVERY_S`."""


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


class SystemdReport:
    """What the supervisor's loop tells systemd: STATUS= every few seconds, WATCHDOG=1 only while frames
    are being published (or none are expected), and while the model loads, that loading goes on."""

    def __init__(self, notifier: SystemdNotifier) -> None:
        self.notifier = notifier
        self._status_sent_at = 0.0
        self._watchdog_at = 0.0
        self._watchdog_published = -1
        self._loading_told_at = 0.0

    def loading(self, now: float) -> None:
        """A TensorRT build or a cold torch.compile takes minutes, more than systemd's default start
        timeout and the unit's watchdog: push both on every `LOADING_EVERY_S`."""
        if now - self._loading_told_at >= LOADING_EVERY_S:
            self._loading_told_at = now
            self.notifier.loading(LOADING_EXTEND_S)

    def progress(self, status: RunStatus | None, now: float) -> None:
        """The workers' merged status file as read now (None: none yet)."""
        notifier = self.notifier
        if notifier.enabled and status is not None and now - self._status_sent_at >= STATUS_EVERY_S:
            notifier.status(status.summary())
            self._status_sent_at = now
        interval = notifier.watchdog_interval
        if not interval or now - self._watchdog_at < interval:
            return
        fresh = status is not None and time.time() - status.time < 3 * max(1.0, interval)
        idle = status is not None and not any(s.state == "running" for s in status.streams.values())
        if fresh and status is not None and (status.published > self._watchdog_published or idle):
            notifier.watchdog()
            self._watchdog_at = now
            self._watchdog_published = status.published
