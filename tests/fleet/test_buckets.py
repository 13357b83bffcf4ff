"""`buckets.is_gone` against a real nats-server: what a daemon asks before it stops a camera that a camera
snapshot lacks (a short snapshot once made a loaded daemon stop all its cameras as "removed")."""

from __future__ import annotations

import asyncio

from streamer.fleet import buckets
from tests.support.nats import NatsCluster


def test_a_camera_is_gone_only_when_the_bucket_says_so(nats_server: NatsCluster) -> None:
    import nats

    async def main() -> dict[str, bool]:
        nc = await nats.connect(servers=nats_server.urls)
        try:
            kv = await nc.jetstream(timeout=5).create_key_value(bucket="cams")
            await kv.put("kept", b"{}")
            await kv.put("removed", b"{}")
            await kv.delete("removed")
            seen = {key: await buckets.is_gone(kv, key) for key in ("kept", "removed", "never")}
        finally:
            await nc.close()
        # NATS not answering is not a removal: the connection is closed, the read fails
        seen["closed"] = await buckets.is_gone(kv, "kept")
        return seen

    assert asyncio.run(main()) == {"kept": False, "removed": True, "never": True, "closed": False}
