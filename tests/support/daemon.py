"""Run `yolostream run` as a real subprocess and collect what a real ZeroMQ subscriber receives."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamer.output.client import ReceiveTimeout, Subscriber
from streamer.output.protocol import DetectionsMessage, EventMessage, Message


def child_pids(pid: int) -> set[int]:
    """Pids of the live direct children of `pid` (from /proc)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def run_dirs(pid: int) -> list[Path]:
    """The daemon's shared-memory run directories (frame rings, sockets)."""
    return list(Path("/dev/shm").glob(f"yolostream-{pid}-*"))


@dataclass
class Daemon:
    """A daemon subprocess with a subscriber connected before it started."""

    proc: subprocess.Popen[str]
    sub: Subscriber
    log_path: Path
    messages: list[Message] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def receive_until(self, done, timeout: float = 60.0) -> list[Message]:  # type: ignore[no-untyped-def]
        """Receive (and keep) messages until `done(messages)` is true; fails the test on timeout."""
        deadline = time.monotonic() + timeout
        while not done(self.messages):
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not self._drain()):
                raise AssertionError(
                    f"gave up waiting (exit code {self.proc.poll()}); got {len(self.messages)} messages; "
                    f"log:\n{self.log()[-4000:]}"
                )
            try:
                self.messages.append(self.sub.recv(timeout=min(left, 1.0)))
            except ReceiveTimeout:
                continue
        return self.messages

    def _drain(self) -> bool:
        try:
            self.messages.append(self.sub.recv(timeout=1.0))
        except ReceiveTimeout:
            return False
        return True

    def until_ended(self, streams: set[str], timeout: float = 60.0) -> list[Message]:
        """Receive until each of `streams` has published an eos or error event."""

        def ended(messages: list[Message]) -> bool:
            done = {m.stream for m in messages if isinstance(m, EventMessage) and m.event in ("eos", "error")}
            return streams <= done

        return self.receive_until(ended, timeout)

    def detections(self, stream: str) -> list[DetectionsMessage]:
        return [m for m in self.messages if isinstance(m, DetectionsMessage) and m.stream == stream]

    def events(self, stream: str, kind: str | None = None) -> list[EventMessage]:
        return [
            m for m in self.messages
            if isinstance(m, EventMessage) and m.stream == stream and (kind is None or m.event == kind)
        ]  # fmt: skip

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:  # say why: the end of its log
            raise AssertionError(
                f"the daemon did not stop within {timeout:.0f} s:\n{self.log()[-4000:]}"
            ) from None

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.sub.close()


def start_daemon(tmp_path: Path, config_text: str, name: str = "daemon", analytics: bool = False) -> Daemon:
    """Write `config_text` (its publish endpoint must be ``{endpoint}``) and start the daemon on it; the
    subscriber also receives ``ana.`` messages with `analytics`."""
    endpoint = f"ipc://{tmp_path}/{name}.pub"
    config = tmp_path / f"{name}.yaml"
    config.write_text(config_text.replace("{endpoint}", endpoint))
    sub = Subscriber(endpoint, analytics=analytics)
    log_path = tmp_path / f"{name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(config)],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
    return Daemon(proc, sub, log_path)


# --- the metrics endpoint of a daemon started with ``metrics: {listen: 127.0.0.1:0}`` ---------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""(name, sorted labels) → value."""


def metrics_url(daemon: Daemon, timeout: float = 30.0) -> str:
    """The URL of the daemon's metrics endpoint, read back from its log (it picks the port)."""
    deadline = time.monotonic() + timeout
    while (found := re.search(r"metrics and health checks on (http://\S+) ", daemon.log())) is None:
        assert daemon.proc.poll() is None and time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    return found.group(1)


def scrape(url: str) -> tuple[str, Samples]:
    """``/metrics`` as Prometheus reads it: the text and its samples."""
    from prometheus_client.parser import text_string_to_metric_families

    from streamer.cli.status import fetch

    code, text = fetch(f"{url}/metrics")
    assert code == 200, text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample `name` with exactly these `labels`; 0 where there is none."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
