"""Durable detections: what the publisher sends also lands in the fleet's JetStream stream, exactly once,
while a NATS server of three is SIGKILLed (tests/support/nats.py: real nats-server processes)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from streamer.config import FleetConfig
from streamer.fleet.durable import DurableSink
from streamer.fleet.names import stream_name
from streamer.output.protocol import DetectionsMessage, EventMessage, decode
from streamer.output.publish import Publisher
from tests.fleet.conftest import read_stream, stream_leader
from tests.support.nats import NatsCluster


def test_no_message_is_lost_or_doubled_when_a_nats_node_is_killed_while_publishing(
    tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    cfg = FleetConfig(nats=tuple(nats_cluster.urls), name="t1", replicas=3)
    sink = DurableSink(cfg, "d1")
    total = 1500
    with Publisher(f"ipc://{tmp_path}/pub", mirror=sink) as pub:
        for i in range(total):
            if i == total // 3:  # a third of the way, the stream's leader dies with publishes in flight
                leader = stream_leader(nats_cluster.urls, stream_name("t1"))
                killed = int(leader.removeprefix("n"))
                nats_cluster.kill(killed)
            stream = "a" if i % 2 else "b"
            pub.publish(
                DetectionsMessage(stream=stream, frame=i // 2, pts=0.0, capture_ts=0.0, width=8, height=8)
            )
            time.sleep(0.002)
        pub.publish(EventMessage(stream="a", event="eos", message="end", ts=time.time()))
    sink.close(timeout=60)
    assert sink.resent > 0  # (the leader's death was felt)
    assert (sink.acked, sink.dropped, sink.pending) == (total + 1, 0, 0)
    alive = [u for i, u in enumerate(nats_cluster.urls) if i != killed]
    stored = read_stream(alive, stream_name("t1"))
    ids = Counter(headers["Nats-Msg-Id"] for _, headers, _ in stored)
    assert len(ids) == total + 1 and max(ids.values()) == 1, "a message is missing or stored twice"
    keys = Counter()
    for subject, headers, payload in stored:
        msg = decode(subject.split(".", 2)[2].encode(), payload)
        assert (
            subject == f"yolostream.t1.{'det' if isinstance(msg, DetectionsMessage) else 'evt'}.{msg.stream}"
        )
        assert headers["Yolostream-Daemon"] == "d1" and headers["Yolostream-Encoding"] == "json"
        keys[msg.stream, msg.seq] += 1
    assert sorted(keys) == sorted(
        [("a", s) for s in range(total // 2 + 1)] + [("b", s) for s in range(total // 2)]
    )
    assert json.loads(stored[-1][2])["event"] == "eos"
