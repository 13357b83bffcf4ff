"""A message as the one line that ``yolostream subscribe`` prints."""

from __future__ import annotations

from streamer.messages import EVENT_EOS, EVENT_ERROR
from streamer.output.protocol import AnalyticsMessage, Detection, ZoneEventRecord
from streamer.output.text import format_message
from tests.support.pubsub import det, evt


def test_format_message() -> None:
    msg = det("cam1", 12, n=2, seq=12)
    msg.detections[0] = Detection(
        class_id=0, class_name="person", score=0.914, box=(12.2, 40.0, 199.6, 380.0)
    )
    msg.pts = 0.48
    assert (
        format_message(msg)
        == "cam1 #12 frame 12 pts 0.480s 2 dets: person 0.91 [12,40,200,380], car 0.77 [10,20,30,40]"
    )
    msg.detections, msg.pts = [], None
    assert format_message(msg) == "cam1 #12 frame 12 pts - 0 dets"
    assert format_message(evt("cam1", EVENT_EOS, "end of file", seq=13)) == "cam1 #13 EVENT eos: end of file"
    err = evt("cam1", EVENT_ERROR, "cannot open")
    err.detail = {"code": 2, "reason": "missing"}
    assert format_message(err) == "cam1 #0 EVENT error: cannot open (code=2, reason=missing)"
    tracked = det("cam1", 3, n=1)
    tracked.detections[0] = Detection(
        class_id=0, class_name="person", score=0.5, box=(1, 2, 3, 4), track_id=7
    )
    assert format_message(tracked).endswith("1 det: person 0.50 #7 [1,2,3,4]")
    ana = AnalyticsMessage(
        stream="gate", seq=2, frame=40, pts=1.6, capture_ts=1.0,
        events=[
            ZoneEventRecord("exit", "yard", 2, 2, "car", reason="lost"),
            ZoneEventRecord("cross", "door", 4, 0, "person", direction="in"),
        ],
    )  # fmt: skip
    assert format_message(ana) == "gate #2 ZONES frame 40: exit yard #2 car (lost); cross door in #4 person"
