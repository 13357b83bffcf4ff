"""The public wire format: what `yolostream` publishes and what subscribers decode.

Every message is a two-part ZeroMQ message ``[topic, payload]``:

- ``det.<stream>`` carries a `DetectionsMessage` (one per frame),
- ``evt.<stream>`` carries an `EventMessage` (the stream started, ended, failed, dropped frames, lost its
  connection, came back or froze),
- ``ana.<stream>`` carries an `AnalyticsMessage` (tracked objects entered or left a zone, crossed a line),
  with a sequence number of its own.

Payloads are JSON (the default) or MessagePack, encoded from the msgspec structs below; `decode` tells
the two apart by the first byte. Within a stream, detections and events share one sequence number
(``seq``), so a subscriber that sees a jump in it knows how many messages it missed. ``docs/protocol.md``
documents the schema for people who write subscribers in other languages.

Compatibility rule: fields may be added without changing `SCHEMA_VERSION` (decoders ignore fields they do
not know); the version changes only when a field is removed, renamed or changes meaning.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Final, Literal, NoReturn

import msgspec

from streamer.errors import YolostreamError
from streamer.messages import EVENT_KINDS, StreamEvent

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

SCHEMA_VERSION: Final = 1

DET_PREFIX: Final = "det."
EVT_PREFIX: Final = "evt."
ANA_PREFIX: Final = "ana."

Encoding = Literal["json", "msgpack"]
ENCODINGS: Final[tuple[str, ...]] = ("json", "msgpack")

STREAM_ID_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_-]*"
_STREAM_ID = re.compile(STREAM_ID_PATTERN)


class ProtocolError(YolostreamError, ValueError):
    """A message is not a valid yolostream message, or has a schema version this code does not know."""


class Detection(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One detected object."""

    class_id: int
    class_name: str
    score: float
    """Confidence in [0, 1], rounded to 4 decimals."""
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in pixels of the source frame (not the model input), rounded to 2 decimals."""
    track_id: int | None = None
    """With tracking on for the stream: the object's track (stable while it is tracked, > 0), or None
    for a detection not (yet) part of a confirmed track. Left out of the payload when None."""


class DetectionsMessage(msgspec.Struct, kw_only=True, tag_field="type", tag="det"):
    """The detections of one frame of one stream (topic ``det.<stream>``).

    `seq` and `publish_ts` are filled in by `streamer.output.publish.Publisher.publish`.
    """

    type: ClassVar[Literal["det"]] = "det"
    """The message kind, as in the payload's ``type`` field (not a constructor argument)."""
    v: int = SCHEMA_VERSION
    stream: str
    seq: int = 0
    """Per-stream sequence number of published messages (shared with events), 0-based, consecutive."""
    frame: int
    """Index of the frame in its source (0-based; keeps counting across loops of a file)."""
    pts: float | None
    """Presentation time in seconds as the container gives it; None when unknown."""
    capture_ts: float
    """Unix time (seconds) at which the frame was decoded."""
    publish_ts: float = 0.0
    """Unix time (seconds) at which the message was published."""
    width: int
    height: int
    detections: list[Detection] = msgspec.field(default_factory=list)


class EventMessage(msgspec.Struct, kw_only=True, tag_field="type", tag="evt"):
    """Something happened to a stream (topic ``evt.<stream>``); `event` is one of `EVENT_KINDS`.

    `seq` is filled in by `streamer.output.publish.Publisher.publish`.
    """

    type: ClassVar[Literal["evt"]] = "evt"
    """The message kind, as in the payload's ``type`` field (not a constructor argument)."""
    v: int = SCHEMA_VERSION
    stream: str
    seq: int = 0
    event: str
    """One of `streamer.messages.EVENT_KINDS`: ``started``, ``eos``, ``error``, ``dropped``,
    ``reconnecting``, ``down``, ``up``, ``frozen``."""
    message: str = ""
    ts: float
    """Unix time (seconds) at which the event happened."""
    detail: dict[str, str | int | float] = msgspec.field(default_factory=dict)


class ZoneEventRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """One thing that happened in a zone or on a line of an `AnalyticsMessage`."""

    event: str
    """``enter`` or ``exit`` (a zone), ``cross`` (a line)."""
    name: str
    """The zone's or the line's name, as in the config."""
    track_id: int
    class_id: int
    class_name: str
    direction: str | None = None
    """``in`` or ``out``: a crossing's direction."""
    reason: str | None = None
    """``lost``: the exit of a track that ended inside the zone."""


class AnalyticsMessage(msgspec.Struct, kw_only=True, tag_field="type", tag="ana"):
    """Zones and lines of one stream at one frame (topic ``ana.<stream>``): sent for each frame with at
    least one event, after that frame's detections.

    `seq` counts the stream's analytics messages (its own counter, not the detections'), filled in by
    `streamer.output.publish.Publisher.publish`, as is `publish_ts`.
    """

    type: ClassVar[Literal["ana"]] = "ana"
    v: int = SCHEMA_VERSION
    stream: str
    seq: int = 0
    frame: int
    pts: float | None
    capture_ts: float
    publish_ts: float = 0.0
    events: list[ZoneEventRecord] = msgspec.field(default_factory=list)
    occupancy: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    """Every zone of the stream → class name → tracked objects inside now (classes with none left out)."""
    counts: dict[str, dict[str, int]] = msgspec.field(default_factory=dict)
    """Every line of the stream → ``{"in": n, "out": n}``, crossings since the inference worker started."""


Message = DetectionsMessage | EventMessage | AnalyticsMessage


class _Header(msgspec.Struct):
    """The part of any version's payload needed to say why it cannot be decoded."""

    v: int | None = None


# Encoders and decoders are built once: creating them per message costs more than encoding.
_JSON_ENCODER = msgspec.json.Encoder()
_MSGPACK_ENCODER = msgspec.msgpack.Encoder()
_JSON_DECODER = msgspec.json.Decoder(Message)
_MSGPACK_DECODER = msgspec.msgpack.Decoder(Message)
_JSON_HEADER = msgspec.json.Decoder(_Header)
_MSGPACK_HEADER = msgspec.msgpack.Decoder(_Header)


def is_valid_stream_id(stream: str) -> bool:
    """Whether `stream` can be used as a stream id (and so in a topic)."""
    return _STREAM_ID.fullmatch(stream) is not None


@functools.lru_cache(maxsize=4096)
def topic_for(prefix: str, stream: str) -> bytes:
    """The topic of messages of kind `prefix` (`DET_PREFIX` or `EVT_PREFIX`) about `stream`.

    Raises:
        ValueError: `stream` is not a valid stream id.
    """
    if not _STREAM_ID.fullmatch(stream):
        raise ValueError(f"invalid stream id {stream!r}: use letters, digits, '_' and '-'")
    return (prefix + stream).encode("ascii")


def detections_from_array(
    dets: ArrayLike, class_names: Sequence[str], track_ids: ArrayLike | None = None
) -> list[Detection]:
    """Build `Detection` records from a ``[K, 6]`` array of ``x1, y1, x2, y2, score, class_id`` rows.

    Box coordinates are rounded to 2 decimals and scores to 4 (computed in float64, so float32 inputs
    come out as short numbers such as ``12.35``, not ``12.350000381469727``). A class id with no entry
    in `class_names` is named by its number.

    Parameters:
        dets: detections in source-frame pixels, e.g. from `streamer.postprocess.nms`.
        class_names: names indexed by class id (e.g. the 80 COCO names).
        track_ids: one per row (``-1``: no track), from `streamer.tracking`; None: tracking is off.

    Returns:
        One `Detection` per row, in row order.
    """
    import numpy as np  # (imported here so that subscribers do not pay for numpy at import time)

    arr = np.asarray(dets, dtype=np.float64)
    if arr.size == 0:
        return []
    if arr.ndim != 2 or arr.shape[1] < 6:
        raise ValueError(f"expected a [K, 6] array of x1, y1, x2, y2, score, class_id; got shape {arr.shape}")
    boxes = np.round(arr[:, :4], 2).tolist()
    scores = np.round(arr[:, 4], 4).tolist()
    class_ids = arr[:, 5].astype(np.int64).tolist()
    n_names = len(class_names)
    if track_ids is None:
        tracks: list[int | None] = [None] * len(boxes)
    else:
        tracks = [t if t > 0 else None for t in np.asarray(track_ids, dtype=np.int64).tolist()]
    return [
        Detection(
            class_id=cid,
            class_name=class_names[cid] if 0 <= cid < n_names else str(cid),
            score=score,
            box=(box[0], box[1], box[2], box[3]),
            track_id=track,
        )
        for box, score, cid, track in zip(boxes, scores, class_ids, tracks, strict=True)
    ]


def event_message(event: StreamEvent) -> EventMessage:
    """The public message for an internal `streamer.messages.StreamEvent` (seq is set when published)."""
    return EventMessage(
        stream=event.stream, event=event.kind, message=event.message, ts=event.time, detail=dict(event.detail)
    )


def encode(msg: Message, encoding: str = "json") -> tuple[bytes, bytes]:
    """Encode `msg` for the wire.

    Parameters:
        msg: the message; its `stream` must be a valid stream id and an event's kind one of `EVENT_KINDS`.
        encoding: ``"json"`` or ``"msgpack"``.

    Returns:
        ``(topic, payload)``, the two frames of the ZeroMQ message.

    Raises:
        ValueError: invalid stream id, event kind or encoding.
    """
    if isinstance(msg, DetectionsMessage):
        topic = topic_for(DET_PREFIX, msg.stream)
    elif isinstance(msg, AnalyticsMessage):
        topic = topic_for(ANA_PREFIX, msg.stream)
    else:
        topic = topic_for(EVT_PREFIX, msg.stream)
        if msg.event not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {msg.event!r}; expected one of {', '.join(EVENT_KINDS)}")
    if encoding == "json":
        return topic, _JSON_ENCODER.encode(msg)
    if encoding == "msgpack":
        return topic, _MSGPACK_ENCODER.encode(msg)
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


def to_json(msg: Message) -> str:
    """`msg` as one compact JSON line (whatever encoding it arrived in)."""
    return _JSON_ENCODER.encode(msg).decode("utf-8")


def decode(topic: bytes, payload: bytes) -> Message:
    """Decode one message received on a SUB socket.

    The encoding is detected from the payload: JSON objects start with ``{``, MessagePack maps never do.

    Parameters:
        topic: the first frame (``det.<stream>``, ``evt.<stream>`` or ``ana.<stream>``).
        payload: the second frame.

    Returns:
        A `DetectionsMessage`, an `EventMessage` or an `AnalyticsMessage`.

    Raises:
        ProtocolError: the payload is not a valid message, has an unsupported schema version, or does not
            match its topic.
    """
    is_json = payload[:1] == b"{"
    try:
        msg = (_JSON_DECODER if is_json else _MSGPACK_DECODER).decode(payload)
    except msgspec.DecodeError as exc:
        _check_version(topic, payload, is_json)
        name = topic.decode("utf-8", "replace")
        raise ProtocolError(
            f"invalid {'JSON' if is_json else 'MessagePack'} payload on topic {name!r}: {exc}"
        ) from None
    if msg.v != SCHEMA_VERSION:
        _version_error(topic, msg.v)
    prefix = _PREFIX_OF[type(msg)]
    if topic != (prefix + msg.stream).encode("utf-8", "replace"):
        raise ProtocolError(
            f"topic {topic.decode('utf-8', 'replace')!r} does not match its payload, "
            f"a {prefix[:-1]!r} message of stream {msg.stream!r}"
        )
    return msg


_PREFIX_OF: dict[type, str] = {
    DetectionsMessage: DET_PREFIX,
    EventMessage: EVT_PREFIX,
    AnalyticsMessage: ANA_PREFIX,
}


def _check_version(topic: bytes, payload: bytes, is_json: bool) -> None:
    """Raise a version error if an undecodable payload is a well-formed message of another version."""
    try:
        header = (_JSON_HEADER if is_json else _MSGPACK_HEADER).decode(payload)
    except msgspec.DecodeError:
        return
    if header.v is not None and header.v != SCHEMA_VERSION:
        _version_error(topic, header.v)


def _version_error(topic: bytes, version: int) -> NoReturn:
    raise ProtocolError(
        f"message on topic {topic.decode('utf-8', 'replace')!r} has schema version {version}; this "
        f"yolostream understands version {SCHEMA_VERSION} (upgrade the subscriber or the publisher)"
    )
