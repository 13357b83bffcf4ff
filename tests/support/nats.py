"""A real NATS JetStream cluster of Debian's `nats-server` on loopback, started by the test itself.

`NatsCluster(tmp_path, size=3)` starts `size` servers, each with its own client and cluster port (free
ports below the ephemeral range, so a restarted node finds its ports still free) and its own JetStream
store directory; `kill(i)` SIGKILLs one node, `restart(i)` starts it again on the same ports and store.
Tests that need it call `require_nats_server()` first: without the binary they skip with the reason.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.rtsp import free_port

_START_S = 30.0


def nats_server_binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/bin/nats-server") if Path(p).is_file()), None
    )


def require_nats_server() -> str:
    """The path of `nats-server`; skips the calling test, with the reason, when it is not installed."""
    binary = nats_server_binary()
    if binary is None:
        pytest.skip("nats-server is not installed (Debian: apt-get install nats-server; .ci/run installs it)")
    return binary


@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    monitor_port: int
    store: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NatsCluster:
    """`size` JetStream servers clustered on loopback (a single server when size is 1)."""

    root: Path
    size: int = 3
    auth: str = ""
    """Extra text for every server's config (e.g. an ``authorization { ... }`` block)."""
    nodes: list[NatsNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.binary = require_nats_server()
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(self.size):
            name = f"n{i}"
            self.nodes.append(
                NatsNode(
                    name,
                    free_port(),
                    free_port(),
                    free_port(),
                    self.root / f"{name}-store",
                    self.root / f"{name}.conf",
                    self.root / f"{name}.log",
                )
            )
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nodes)
        for node in self.nodes:
            cluster = (
                f"cluster {{\n  name: yolostream-test\n  listen: 127.0.0.1:{node.cluster_port}\n"
                f"  routes: [{routes}]\n}}\n"
                if self.size > 1
                else ""
            )
            node.config.write_text(
                f"server_name: {node.name}\nlisten: 127.0.0.1:{node.port}\n"
                f"http: 127.0.0.1:{node.monitor_port}\n"
                f"jetstream {{\n  store_dir: {node.store}\n  max_memory_store: 64MB\n"
                f"  max_file_store: 256MB\n}}\n{cluster}{self.auth}\n"
            )

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> NatsCluster:
        for i in range(self.size):
            self._spawn(i)
        for i in range(self.size):
            self._wait_up(i)
        self.wait_for_jetstream()
        return self

    def _spawn(self, i: int) -> None:
        node = self.nodes[i]
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(
                [self.binary, "-c", str(node.config)], stdout=log, stderr=subprocess.STDOUT
            )

    def _wait_up(self, i: int) -> None:
        node = self.nodes[i]
        deadline = time.monotonic() + _START_S
        while time.monotonic() < deadline:
            if not node.running:
                raise RuntimeError(f"nats-server {node.name} exited:\n{node.log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", node.port), 0.5):
                return
            time.sleep(0.05)
        raise RuntimeError(f"nats-server {node.name} did not listen in {_START_S:.0f} s")

    def wait_for_jetstream(self, timeout: float = 60.0) -> None:
        """Wait until every running node reports JetStream enabled with a meta leader (a quorum)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._jetstream_ready(n) for n in self.nodes if n.running):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the JetStream cluster formed no meta leader in {timeout:.0f} s")

    def _jetstream_ready(self, node: NatsNode) -> bool:
        url = f"http://127.0.0.1:{node.monitor_port}/healthz?js-enabled-only=true"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status != 200:
                    return False
            if self.size == 1:
                return True
            with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/jsz", timeout=2) as resp:
                import json

                info = json.loads(resp.read())
            return bool((info.get("meta_cluster") or {}).get("leader"))
        except (OSError, ValueError):
            return False

    def kill(self, i: int) -> None:
        """SIGKILL node `i` (no clean shutdown: its store is left as a crash leaves it)."""
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def restart(self, i: int) -> None:
        """Start node `i` again on its ports and store; waits until it listens."""
        self.kill(i)
        self._spawn(i)
        self._wait_up(i)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(5)

    def logs(self) -> str:
        return "\n".join(f"--- {n.name}\n{n.log.read_text(errors='replace')[-2000:]}" for n in self.nodes)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
