"""The NATS names of a fleet: one JetStream stream of detections and events, and its KV buckets."""

from __future__ import annotations

SUBJECT_ROOT = "yolostream"


def stream_name(fleet: str) -> str:
    """The JetStream stream that holds the fleet's durable ``det`` and ``evt`` messages."""
    return f"YOLOSTREAM_{fleet}"


def subjects(fleet: str) -> str:
    """The subjects of that stream: ``yolostream.<fleet>.>``."""
    return f"{SUBJECT_ROOT}.{fleet}.>"


def subject_of(fleet: str, topic: bytes) -> str:
    """The subject of a ZeroMQ topic ``det.<stream>`` (or ``evt.``): ``yolostream.<fleet>.det.<stream>``."""
    return f"{SUBJECT_ROOT}.{fleet}.{topic.decode()}"


def topic_of(fleet: str, subject: str) -> bytes:
    """The ZeroMQ topic a durable message's subject stands for (the inverse of `subject_of`)."""
    prefix = f"{SUBJECT_ROOT}.{fleet}."
    if not subject.startswith(prefix):
        raise ValueError(f"subject {subject!r} is not one of fleet {fleet!r}")
    return subject[len(prefix) :].encode()


def cameras_bucket(fleet: str) -> str:
    """KV bucket: camera id → its source entry (JSON), edited by ``yolostream fleet put|rm``."""
    return f"yolostream_{fleet}_cameras"


def leases_bucket(fleet: str) -> str:
    """KV bucket: camera id → the lease of the daemon that runs it (entries expire after ``lease_s``)."""
    return f"yolostream_{fleet}_leases"


def daemons_bucket(fleet: str) -> str:
    """KV bucket: daemon run id → what it is and how loaded (entries expire after ``lease_s``)."""
    return f"yolostream_{fleet}_daemons"


def rebalance_bucket(fleet: str) -> str:
    """KV bucket: the rebalance plan (`streamer.fleet.plan`), written by ``yolostream fleet rebalance``;
    it expires after 3 ``lease_s``."""
    return f"yolostream_{fleet}_rebalance"


HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_DAEMON = "Yolostream-Daemon"
HEADER_ENCODING = "Yolostream-Encoding"
