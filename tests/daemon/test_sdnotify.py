"""What the supervisor tells systemd, and when (`streamer.daemon.sdnotify.SystemdReport`), read from a real
notify socket. The supervisor sending it is tested end to end in tests/daemon/test_supervisor.py."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.daemon.sdnotify import LOADING_EVERY_S, STATUS_EVERY_S, SystemdNotifier, SystemdReport
from streamer.observability.status import RunStatus, StreamStatus


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(tmp_path / "notify.sock"))
    server.setblocking(False)
    yield server
    server.close()


def said(server: socket.socket) -> list[str]:
    """The datagrams sent since the last call (the notifier's sendto has returned: they are queued)."""
    out = []
    while True:
        try:
            out.append(server.recv(4096).decode())
        except BlockingIOError:
            return out


def report(server: socket.socket, watchdog_usec: int = 2_000_000) -> SystemdReport:
    env = {"NOTIFY_SOCKET": server.getsockname(), "WATCHDOG_USEC": str(watchdog_usec)}
    return SystemdReport(SystemdNotifier(env))


def status(published: int, state: str = "running", age_s: float = 0.0) -> RunStatus:
    return RunStatus(time=time.time() - age_s, published=published, streams={"a": StreamStatus(state=state)})


def test_the_watchdog_is_fed_only_while_frames_are_published(systemd: socket.socket) -> None:
    r = report(systemd)  # WatchdogSec=2: a ping every second
    r.progress(status(10), now=100.0)
    assert said(systemd) == ["STATUS=1 stream(s): 1 running; 10 frames published", "WATCHDOG=1"]
    r.progress(status(10), now=101.5)  # a running stream published nothing for 1.5 s: no ping
    assert said(systemd) == []
    r.progress(status(11), now=101.6)
    assert said(systemd) == ["WATCHDOG=1"]
    r.progress(status(12), now=102.0)  # progress, but within the interval of the last ping
    assert said(systemd) == []


def test_the_watchdog_is_fed_while_no_frame_is_expected_but_not_on_a_stale_status(
    systemd: socket.socket,
) -> None:
    r = report(systemd)
    r.progress(status(0, state="down"), now=100.0)  # every stream down: nothing to publish, still alive
    assert said(systemd)[-1] == "WATCHDOG=1"
    r.progress(status(0, state="down"), now=101.5)
    assert said(systemd) == ["WATCHDOG=1"]
    r.progress(status(5, age_s=10.0), now=103.0)  # the inference worker stopped writing its status
    assert said(systemd) == []
    r.progress(None, now=104.5)  # no status at all
    assert said(systemd) == []


def test_status_is_sent_every_few_seconds(systemd: socket.socket) -> None:
    r = report(systemd, watchdog_usec=0)
    for i, now in enumerate([100.0, 100.0 + STATUS_EVERY_S / 2, 100.0 + STATUS_EVERY_S]):
        r.progress(status(i), now=now)
    assert said(systemd) == [
        "STATUS=1 stream(s): 1 running; 0 frames published",
        "STATUS=1 stream(s): 1 running; 2 frames published",
    ]


def test_loading_extends_the_start_timeout_and_feeds_the_watchdog(systemd: socket.socket) -> None:
    r = report(systemd)
    for now in [10.0, 10.1, 10.0 + LOADING_EVERY_S]:
        r.loading(now)
    assert said(systemd) == ["EXTEND_TIMEOUT_USEC=30000000\nWATCHDOG=1"] * 2
