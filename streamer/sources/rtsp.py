"""How an RTSP stream's media travel: the ``transport`` setting turned into FFmpeg options and attempts.

``tcp`` interleaves RTP in the RTSP connection (through NAT and firewalls, no loss), ``udp`` receives it on
separate UDP ports, ``auto`` (the default) asks for TCP and takes UDP when the server refuses TCP: VLC's
RTSP server answers SETUP with ``461 Unsupported transport``, which FFmpeg reports as
``EPROTONOSUPPORT`` ("Protocol not supported"), a message with no hint that UDP would work.

Why not FFmpeg's own fallback (``rtsp_transport=tcp+udp`` with ``rtsp_flags=prefer_tcp``, which does
try TCP, then UDP after a 461): nothing tells the caller which transport it settled on, so it could not
be logged; two attempts of ours cost one more DESCRIBE, only for servers that refuse TCP.

UDP sockets: FFmpeg binds the RTP/RTCP sockets of unicast UDP to every interface (``0.0.0.0``, ports
from ``min_port``-``max_port``); its rtsp demuxer has no option to bind them to one address (its
``localaddr`` is passed on for multicast only: measured with PyAV 18 / FFmpeg 8.1, the sockets stay on
``0.0.0.0`` with it). What it does have is ``rtsp_flags=filter_src``: packets that do not come from the
address and port the server announced in SETUP are dropped. UDP streams are opened with it, so another
host (or process) cannot inject packets into a stream even though the port is reachable.
"""

from __future__ import annotations

import errno

TRANSPORTS = ("auto", "tcp", "udp")

REFUSED_TCP = "the server refuses RTP over TCP (RTSP 461 Unsupported transport, 'Protocol not supported')"


def is_rtsp(url: str) -> bool:
    return url.startswith(("rtsp://", "rtsps://"))


def attempts(transport: str) -> tuple[str, ...]:
    """The transports to try, in order, for the `transport` setting."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    return ("tcp", "udp") if transport == "auto" else (transport,)


def ffmpeg_options(transport: str) -> dict[str, str]:
    """FFmpeg's rtsp demuxer options for one attempt over `transport` (``tcp`` or ``udp``)."""
    if transport == "udp":
        return {"rtsp_transport": "udp", "rtsp_flags": "filter_src"}
    return {"rtsp_transport": transport}


def refused_tcp(exc: BaseException) -> bool:
    """Whether `exc` (from opening over TCP) is the server refusing TCP interleaving."""
    text = str(exc)
    return (
        getattr(exc, "errno", None) == errno.EPROTONOSUPPORT
        or "461" in text
        or "Unsupported transport" in text
    )
