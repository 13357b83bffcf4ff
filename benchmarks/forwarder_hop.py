"""The latency the publish forwarder (several inference workers, `streamer.output.forwarder`) adds.

Publishes N detections messages, paced, through a worker-side `Publisher` straight to a subscriber, and
through the forwarder's hop, and prints the publish → receive latency (``publish_ts`` to the time the
subscriber decoded it) of each path.

    python benchmarks/forwarder_hop.py [--messages 3000] [--rate 1000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from streamer.config import PublishConfig
from streamer.output.client import Subscriber
from streamer.output.forwarder import Forwarder, worker_endpoint
from streamer.output.protocol import Detection, DetectionsMessage
from streamer.output.publish import Publisher


def _message(i: int) -> DetectionsMessage:
    dets = [Detection(class_id=0, class_name="person", score=0.9, box=(1.0, 2.0, 3.0, 4.0))] * 5
    return DetectionsMessage(stream="a", frame=i, pts=i / 30, capture_ts=time.time(), width=1920,
                             height=1080, detections=dets)  # fmt: skip


def _run(pub: Publisher, sub: Subscriber, n: int, rate: float) -> list[float]:
    latencies = []
    for i in range(n):
        pub.publish(_message(i))
        msg = sub.recv(timeout=5.0)
        latencies.append(time.time() - msg.publish_ts)  # type: ignore[union-attr]
        time.sleep(max(0.0, 1 / rate - latencies[-1]))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with Publisher(f"ipc://{tmp}/direct.sock") as pub, Subscriber(pub.endpoint) as sub:
            pub.wait_for_subscribers(2)
            rows.append(("direct (one worker)", _run(pub, sub, args.messages, args.rate)))
        folder = Path(tmp) / "w0"
        folder.mkdir()
        with Publisher(worker_endpoint(str(folder))) as pub:
            fwd = Forwarder(PublishConfig(endpoint=f"ipc://{tmp}/front.sock"), [worker_endpoint(str(folder))])
            try:
                with Subscriber(fwd.endpoint) as sub:
                    fwd.publisher.wait_for_subscribers(2)
                    pub.wait_for_subscribers(1)
                    rows.append(("through the forwarder", _run(pub, sub, args.messages, args.rate)))
            finally:
                fwd.close()
    print(f"{args.messages} messages at {args.rate:.0f}/s, publish_ts -> received and decoded:")
    print(f"{'path':<24}{'p50 µs':>9}{'p90 µs':>9}{'p99 µs':>9}{'max µs':>9}")
    for name, lat in rows:
        q = statistics.quantiles(lat, n=100)
        print(f"{name:<24}{q[49] * 1e6:9.0f}{q[89] * 1e6:9.0f}{q[98] * 1e6:9.0f}{max(lat) * 1e6:9.0f}")


if __name__ == "__main__":
    main()
