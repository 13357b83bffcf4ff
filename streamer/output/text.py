"""Messages as text for a person: one line each, as ``yolostream subscribe`` prints them (the ZeroMQ
subscriber, `streamer.cli.subscribe`, and the fleet's durable stream, `streamer.fleet.replay`)."""

from __future__ import annotations

from streamer.output.protocol import AnalyticsMessage, EventMessage, Message

__all__ = ["format_message"]


def _num(x: float) -> str:
    return f"{x:.0f}"


def format_message(msg: Message) -> str:
    """One human-readable line for `msg`, as printed by ``yolostream subscribe``.

    Examples: ``cam1 #12 frame 12 pts 0.480s 2 dets: person 0.91 [12,40,200,380], car 0.77 [...]`` and
    ``cam1 #13 EVENT eos: end of file``.
    """
    if isinstance(msg, EventMessage):
        line = f"{msg.stream} #{msg.seq} EVENT {msg.event}: {msg.message}"
        if msg.detail:
            line += " (" + ", ".join(f"{k}={v}" for k, v in msg.detail.items()) + ")"
        return line
    if isinstance(msg, AnalyticsMessage):
        happened = "; ".join(
            f"{e.event} {e.name}" + (f" {e.direction}" if e.direction else "")
            + f" #{e.track_id} {e.class_name}" + (f" ({e.reason})" if e.reason else "")
            for e in msg.events
        )  # fmt: skip
        return f"{msg.stream} #{msg.seq} ZONES frame {msg.frame}: {happened}"
    pts = "-" if msg.pts is None else f"{msg.pts:.3f}s"
    n = len(msg.detections)
    line = f"{msg.stream} #{msg.seq} frame {msg.frame} pts {pts} {n} det{'' if n == 1 else 's'}"
    if n:
        line += ": " + ", ".join(
            f"{d.class_name} {d.score:.2f}{'' if d.track_id is None else f' #{d.track_id}'} "
            f"[{','.join(map(_num, d.box))}]"
            for d in msg.detections
        )
    return line
