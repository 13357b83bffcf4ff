"""A real RTSP server for tests (`tests/support/rtsp_server.py`, run by the system python), as a process
a test starts, kills, pauses and restarts on the same port.

The server is GStreamer's, from Debian's packages, importable only by ``/usr/bin/python3``; where it is
missing, `require_rtsp_server` skips the test with the reason and the apt line (CI installs them).
"""

from __future__ import annotations

import functools
import os
import random
import select
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
PACKAGES = (
    "gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-bad"
)
_ELEMENTS = ("multifilesrc", "tsdemux", "h264parse", "rtph264pay")
_CHECK = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    f"print(' '.join(e for e in {_ELEMENTS!r} if Gst.ElementFactory.find(e) is None))"
)


@functools.cache
def unavailable() -> str | None:
    """Why the RTSP server cannot run on this machine, or None when it can."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON} to run GStreamer's RTSP server"
    try:
        check = subprocess.run([SYSTEM_PYTHON, "-c", _CHECK], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "checking for GStreamer's RTSP server timed out"
    if check.returncode != 0:
        error = (check.stderr.strip().splitlines() or ["?"])[-1]
        why = f"GStreamer's RTSP server is not importable by {SYSTEM_PYTHON} ({error})"
        return f"{why}; apt-get install {PACKAGES}"
    if check.stdout.strip():
        return f"GStreamer elements missing: {check.stdout.strip()}; apt-get install {PACKAGES}"
    return None


def require_rtsp_server() -> None:
    """Skip the calling test, with the reason, when the RTSP server cannot run here."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range.

    A server restarted on the same port must find it still free: a port from the ephemeral range could
    meanwhile become the local end of some outgoing connection (even of a client retrying to reach it).
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found below the ephemeral range")


class RtspServer:
    """The test server serving `mounts` (``{"/cam": clip.ts}``), each looped, on 127.0.0.1.

    It listens on `port` (by default a free one, see `free_port`); `restart` reuses it, so clients
    reconnect to the same URL. The server's own messages go to `log_path`.
    """

    def __init__(self, mounts: Mapping[str, Path], log_path: Path, port: int | None = None) -> None:
        self.mounts = dict(mounts)
        self.log_path = log_path
        self.port = free_port() if port is None else port
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20.0) -> RtspServer:
        """Start the server and wait until it serves."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the RTSP server is already running")
        args = [f"{mount}={path}" for mount, path in self.mounts.items()]
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), *args],
                stdout=subprocess.PIPE, stderr=log, text=True,
            )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while not line.endswith("\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                self.kill()
                raise RuntimeError(f"the RTSP server did not start in {timeout:.0f} s: {self._log_tail()}")
            chunk = self.proc.stdout.readline()
            if not chunk:
                raise RuntimeError(f"the RTSP server exited ({self.proc.wait()}): {self._log_tail()}")
            line += chunk
        word, _, port = line.partition(" ")
        if word != "ready":
            raise RuntimeError(f"unexpected line from the RTSP server: {line!r}")
        self.port = int(port)
        return self

    def url(self, mount: str, user: str | None = None, password: str | None = None) -> str:
        auth = f"{quote(user, safe='')}:{quote(password or '', safe='')}@" if user is not None else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{mount}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: the kernel resets its connections)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)  # (a paused server would not die until continued)
                self.proc.kill()
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def restart(self, timeout: float = 20.0) -> RtspServer:
        """Kill the server if it runs, and start it again on the same port."""
        self.kill()
        return self.start(timeout)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing more is sent."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> RtspServer:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
