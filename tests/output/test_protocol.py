"""The wire schema: encoding, decoding, version checks and the detections helper."""

from __future__ import annotations

import json

import msgspec
import numpy as np
import pytest

from streamer.messages import EVENT_EOS, EVENT_KINDS, StreamEvent
from streamer.output.protocol import (
    SCHEMA_VERSION,
    AnalyticsMessage,
    Detection,
    DetectionsMessage,
    EventMessage,
    ProtocolError,
    ZoneEventRecord,
    decode,
    detections_from_array,
    encode,
    event_message,
    to_json,
)


def make_det(stream: str = "cam1", n: int = 2) -> DetectionsMessage:
    dets = [
        Detection(class_id=i, class_name=f"c{i}", score=0.5 + i / 100, box=(1.5, 2.25, 30.0, 40.75))
        for i in range(n)
    ]
    return DetectionsMessage(
        stream=stream, seq=7, frame=12, pts=0.48, capture_ts=1700000000.25, publish_ts=1700000000.5,
        width=1920, height=1080, detections=dets,
    )  # fmt: skip


def make_evt(kind: str = EVENT_EOS) -> EventMessage:
    detail: dict[str, str | int | float] = {"frames": 300, "codec": "h264", "fps": 25.0}
    return EventMessage(
        stream="cam-2_b", seq=8, event=kind, message="end of file", ts=1700000001.0, detail=detail
    )


def make_ana() -> AnalyticsMessage:
    return AnalyticsMessage(
        stream="gate", seq=3, frame=40, pts=1.6, capture_ts=1700000002.0, publish_ts=1700000002.1,
        events=[
            ZoneEventRecord("enter", "yard", 4, 0, "person"),
            ZoneEventRecord("exit", "yard", 2, 2, "car", reason="lost"),
            ZoneEventRecord("cross", "door", 4, 0, "person", direction="in"),
        ],
        occupancy={"yard": {"person": 1}}, counts={"door": {"in": 1, "out": 0}},
    )  # fmt: skip


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
@pytest.mark.parametrize(
    "msg", [make_det(), make_det(n=0), make_evt(), make_ana()], ids=["det", "det-empty", "evt", "ana"]
)
def test_round_trip(encoding: str, msg: DetectionsMessage | EventMessage | AnalyticsMessage) -> None:
    topic, payload = encode(msg, encoding)
    assert topic == f"{msg.type}.{msg.stream}".encode()
    assert payload[:1] == b"{" if encoding == "json" else payload[:1] != b"{"
    back = decode(topic, payload)
    assert back == msg
    assert type(back) is type(msg)


def test_json_is_compact_plain_and_documented_field_names() -> None:
    _, payload = encode(make_det(n=1))
    text = payload.decode()
    assert " " not in text and "\n" not in text
    obj = json.loads(text)
    assert obj == {
        "type": "det", "v": SCHEMA_VERSION, "stream": "cam1", "seq": 7, "frame": 12, "pts": 0.48,
        "capture_ts": 1700000000.25, "publish_ts": 1700000000.5, "width": 1920, "height": 1080,
        "detections": [{"class_id": 0, "class_name": "c0", "score": 0.5, "box": [1.5, 2.25, 30.0, 40.75]}],
    }  # fmt: skip
    evt = json.loads(encode(make_evt())[1])
    assert evt == {
        "type": "evt", "v": SCHEMA_VERSION, "stream": "cam-2_b", "seq": 8, "event": "eos",
        "message": "end of file", "ts": 1700000001.0, "detail": {"frames": 300, "codec": "h264", "fps": 25.0},
    }  # fmt: skip
    assert to_json(make_evt()) == encode(make_evt())[1].decode()


def test_pts_may_be_null() -> None:
    msg = make_det()
    msg.pts = None
    topic, payload = encode(msg)
    assert b'"pts":null' in payload
    assert decode(topic, payload) == msg


def test_decode_accepts_a_payload_written_by_hand_with_extra_fields() -> None:
    payload = json.dumps(
        {"v": 1, "type": "evt", "stream": "x", "seq": 0, "event": "started", "ts": 1.0, "new_field": [1, 2]}
    ).encode()
    msg = decode(b"evt.x", payload)
    assert isinstance(msg, EventMessage)
    assert (msg.event, msg.message, msg.detail) == ("started", "", {})


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"hello",
        b"{not json",
        b"[1, 2]",
        b'{"type": "nope", "v": 1}',
        b"\xc1\xc1",
        b'{"type": "det", "v": 1}',
    ],
)
def test_garbage_raises_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(b"det.cam1", payload)
    assert isinstance(info.value, ValueError)
    assert "det.cam1" in str(info.value)


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_unknown_schema_version_is_rejected(encoding: str) -> None:
    msg = make_det()
    msg.v = SCHEMA_VERSION + 1
    topic, payload = encode(msg, encoding)
    with pytest.raises(ProtocolError, match=r"schema version 2.*understands version 1"):
        decode(topic, payload)


def test_future_version_with_another_shape_gets_the_version_error() -> None:
    payload = msgspec.json.encode({"v": 2, "type": "det", "objects": []})
    with pytest.raises(ProtocolError, match="schema version 2"):
        decode(b"det.cam1", payload)


def test_topic_must_match_payload() -> None:
    _, payload = encode(make_det("cam1"))
    with pytest.raises(ProtocolError, match="does not match"):
        decode(b"det.cam10", payload)
    with pytest.raises(ProtocolError, match="does not match"):
        decode(b"evt.cam1", payload)


def test_encode_rejects_bad_stream_ids_kinds_and_encodings() -> None:
    with pytest.raises(ValueError, match="stream id"):
        encode(make_det("cam 1"))
    with pytest.raises(ValueError, match="stream id"):
        encode(make_det("_cam"))
    with pytest.raises(ValueError, match="event kind"):
        encode(make_evt("exploded"))
    with pytest.raises(ValueError, match="encoding"):
        encode(make_det(), "xml")


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_every_event_kind_encodes(kind: str) -> None:
    topic, payload = encode(make_evt(kind))
    msg = decode(topic, payload)
    assert isinstance(msg, EventMessage) and msg.event == kind


def test_event_message_from_internal_event() -> None:
    ev = StreamEvent(stream="cam1", kind=EVENT_EOS, message="end of file", time=5.0, detail={"frames": 3})
    assert event_message(ev) == EventMessage(
        stream="cam1", event=EVENT_EOS, message="end of file", ts=5.0, detail={"frames": 3}
    )


def test_detections_from_array_rounds_and_names() -> None:
    arr = np.array(
        [
            [12.345678, 40.004, 200.999, 380.0, 0.912345678, 0],
            [1, 2, 3, 4, 0.77777, 2],
            [5, 6, 7, 8, 0.1, 95],
        ],
        dtype=np.float32,
    )
    dets = detections_from_array(arr, ["person", "bicycle", "car"])
    assert dets == [
        Detection(class_id=0, class_name="person", score=0.9123, box=(12.35, 40.0, 201.0, 380.0)),
        Detection(class_id=2, class_name="car", score=0.7778, box=(1.0, 2.0, 3.0, 4.0)),
        Detection(class_id=95, class_name="95", score=0.1, box=(5.0, 6.0, 7.0, 8.0)),
    ]
    # float32 inputs must not leak their binary noise into the JSON.
    msg = DetectionsMessage(stream="s", frame=0, pts=None, capture_ts=0.0, width=4, height=4, detections=dets)
    text = encode(msg)[1].decode()
    assert '"box":[12.35,40.0,201.0,380.0]' in text
    assert '"score":0.9123' in text


def test_detections_from_array_empty_and_bad_shape() -> None:
    assert detections_from_array(np.zeros((0, 6), np.float32), ["a"]) == []
    with pytest.raises(ValueError, match=r"\[K, 6\]"):
        detections_from_array(np.zeros((3, 4)), ["a"])


def test_track_ids_are_added_compatibly() -> None:
    """Without tracking a detection's payload has no track_id (byte for byte as before); with it, ids > 0
    go out and -1 (no confirmed track) is left out; an old-style payload decodes with track_id None."""
    from streamer.output.protocol import decode, detections_from_array, encode

    rows = [[1, 2, 3, 4, 0.5, 0], [5, 6, 7, 8, 0.4, 0]]
    untracked = DetectionsMessage(
        stream="a", frame=0, pts=None, capture_ts=1.0, width=9, height=9,
        detections=detections_from_array(rows, ["p"]),
    )  # fmt: skip
    _, payload = encode(untracked)
    assert b"track_id" not in payload
    tracked = DetectionsMessage(
        stream="a", frame=0, pts=None, capture_ts=1.0, width=9, height=9,
        detections=detections_from_array(rows, ["p"], [7, -1]),
    )  # fmt: skip
    for encoding in ("json", "msgpack"):
        back = decode(*encode(tracked, encoding))
        assert isinstance(back, DetectionsMessage)
        assert [d.track_id for d in back.detections] == [7, None]
    assert [d.track_id for d in decode(b"det.a", payload).detections] == [None, None]  # type: ignore[union-attr]


def test_analytics_json_leaves_out_empty_direction_and_reason() -> None:
    topic, payload = encode(make_ana())
    assert topic == b"ana.gate"
    obj = json.loads(payload)
    assert obj["type"] == "ana" and obj["v"] == SCHEMA_VERSION and obj["seq"] == 3
    assert obj["events"][0] == {
        "event": "enter",
        "name": "yard",
        "track_id": 4,
        "class_id": 0,
        "class_name": "person",
    }
    assert obj["events"][1]["reason"] == "lost" and obj["events"][2]["direction"] == "in"
    assert obj["occupancy"] == {"yard": {"person": 1}} and obj["counts"] == {"door": {"in": 1, "out": 0}}
    with pytest.raises(ProtocolError, match="does not match"):
        decode(b"det.gate", payload)
