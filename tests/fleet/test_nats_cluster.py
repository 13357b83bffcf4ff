"""The test NATS cluster itself (tests/support/nats.py): it forms, replicates, survives a node's SIGKILL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.nats import NatsCluster, require_nats_server

nats = pytest.importorskip("nats", reason="the fleet tests need nats-py (a base dependency)")


def test_a_three_node_cluster_keeps_acknowledging_publishes_while_a_node_is_killed_and_restarted(
    tmp_path: Path,
) -> None:
    require_nats_server()

    async def main(cluster: NatsCluster) -> tuple[int, int]:
        nc = await nats.connect(servers=cluster.urls, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream(timeout=5)
        await js.add_stream(name="T", subjects=["t.>"], num_replicas=3)
        acked = 0
        for i in range(300):
            if i == 100:
                cluster.kill(0)
            if i == 200:
                cluster.restart(0)
            # a publish in flight when a node dies is retried (same Nats-Msg-Id), for as long as the
            # cluster takes to elect new leaders (50 tries of 0.1 s were too few once under load: 299/300)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    await js.publish(f"t.{i % 3}", b"x", headers={"Nats-Msg-Id": str(i)})
                    acked += 1
                    break
                except (nats.errors.TimeoutError, nats.js.errors.Error, nats.errors.Error):
                    await asyncio.sleep(0.1)
        info = await js.stream_info("T")
        await nc.close()
        return acked, info.state.messages

    with NatsCluster(tmp_path, size=3) as cluster:
        acked, stored = asyncio.run(main(cluster))
        assert cluster.nodes[0].running
    assert (acked, stored) == (300, 300)
