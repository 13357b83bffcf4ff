"""VLC as an RTSP server for tests: a real server that refuses RTP over TCP (``461 Unsupported transport``).

Debian's ``vlc-bin`` and ``vlc-plugin-base`` serve a file with ``--sout '#rtp{sdp=rtsp://…}'``. VLC
refuses to run as root ("VLC is not supposed to be run as root"; Debian's ``cvlc`` has the check built
in), and CI runs the tests as root: there the server runs as ``nobody`` (Popen's ``user``/``group``),
from a directory of its own that ``nobody`` can read (pytest's ``tmp_path`` is private to root), with
its ``HOME`` there too (VLC writes its config and cache under it). Where ``cvlc`` is missing,
`require_vlc` skips the test with the reason and the apt line (CI installs it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.rtsp import free_port

PACKAGES = "vlc-bin vlc-plugin-base"
UNPRIVILEGED_USER = "nobody"


def unavailable() -> str | None:
    """Why VLC cannot serve RTSP here, or None when it can."""
    if shutil.which("cvlc") is None:
        return f"VLC is not installed (no cvlc); apt-get install {PACKAGES}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError:
            return f"running as root and there is no user {UNPRIVILEGED_USER!r} to run VLC as"
    return None


def require_vlc() -> None:
    """Skip the calling test, with the reason, when VLC cannot serve RTSP here."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)


class VlcRtspServer:
    """VLC serving `media` (looped) as ``rtsp://127.0.0.1:<port>/s``; its messages go to `log_path`."""

    def __init__(self, media: Path, log_path: Path, port: int | None = None) -> None:
        self.media = media
        self.log_path = log_path
        self.port = free_port() if port is None else port
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/s"

    def start(self, timeout: float = 30.0) -> VlcRtspServer:
        """Start VLC and wait until it describes the stream (RTSP 200: before its media is up, a listening
        VLC answers DESCRIBE with a 5XX, which a loaded machine made a test's first open meet)."""
        self._dir = Path(tempfile.mkdtemp(prefix="yolostream-vlc-"))
        self._dir.chmod(0o755)
        media = self._dir / self.media.name
        shutil.copyfile(self.media, media)
        media.chmod(0o644)
        home = self._dir / "home"
        home.mkdir()
        identity: dict[str, object] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(home, user.pw_uid, user.pw_gid)
            identity = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        command = [
            "cvlc", "-I", "dummy", "--no-audio", "--loop", "--verbose=1", str(media),
            "--sout", f"#rtp{{sdp={self.url}}}",
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self._dir, start_new_session=True, **identity,  # type: ignore[call-overload]
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._describes():
            if self.proc.poll() is not None:
                raise RuntimeError(f"VLC exited ({self.proc.returncode}): {self._log_tail()}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"VLC is not listening after {timeout:.0f} s: {self._log_tail()}")
            time.sleep(0.1)
        return self

    def _describes(self) -> bool:
        request = f"DESCRIBE {self.url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\n\r\n"
        with socket.socket() as s:
            s.settimeout(2.0)
            try:
                s.connect(("127.0.0.1", self.port))
                s.sendall(request.encode())
                status = s.recv(256).split(b"\r\n", 1)[0]
            except OSError:
                return False
        return status.startswith(b"RTSP/1.0 200")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: VLC and nothing else
            self.proc.wait(10)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> VlcRtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
