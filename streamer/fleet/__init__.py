"""Fleet mode: daemons on several hosts share cameras and publish durably through NATS JetStream.

`names` (subjects, buckets, the stream), `connect` (a NATS connection from the config's ``fleet``
section, credentials never logged), `member` (the leases a daemon holds), `plan` and `rebalance`
(``yolostream fleet rebalance``), `durable` (the inference worker's mirror of every message into
JetStream), `replay` (``yolostream subscribe --nats``). See docs/fleet.md.
"""
