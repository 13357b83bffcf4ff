"""Fixtures of the fleet tests: real NATS clusters (tests/support/nats.py) and readers of their streams."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nats import NatsCluster, require_nats_server

pytest.importorskip("nats", reason="the fleet tests need nats-py (a base dependency)")


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three JetStream servers clustered on loopback."""
    require_nats_server()
    with NatsCluster(tmp_path / "nats", size=3) as cluster:
        yield cluster


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsCluster]:
    """One JetStream server (faster to start, for tests that do not kill servers)."""
    require_nats_server()
    with NatsCluster(tmp_path / "nats", size=1) as cluster:
        yield cluster


def read_stream(urls: list[str], stream: str) -> list[tuple[str, dict[str, str], bytes]]:
    """Every message of a JetStream stream: (subject, headers, payload), in stream order."""
    import nats

    async def main() -> list[tuple[str, dict[str, str], bytes]]:
        nc = await nats.connect(servers=urls)
        try:
            js = nc.jetstream(timeout=10)
            info = await js.stream_info(stream)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                out.append((msg.subject, dict(msg.headers or {}), msg.data or b""))
            return out
        finally:
            await nc.close()

    return asyncio.run(main())


def stream_leader(urls: list[str], stream: str) -> str:
    """The server name (``n0``, ...) of the node that leads a JetStream stream."""
    import nats

    async def main() -> str:
        nc = await nats.connect(servers=urls)
        try:
            info = await nc.jetstream(timeout=10).stream_info(stream)
            assert info.cluster is not None and info.cluster.leader
            return info.cluster.leader
        finally:
            await nc.close()

    return asyncio.run(main())
