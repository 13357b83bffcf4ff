"""How an RTSP stream's media travel: the ``transport`` setting turned into FFmpeg options and attempts.

``tcp`` interleaves RTP in the RTSP connection (through NAT and firewalls, no loss), ``udp`` receives it on
separate UDP ports, ``auto`` (the default) asks for TCP and takes UDP when the server refuses TCP: VLC's
RTSP server answers SETUP with ``461 Unsupported transport``, which FFmpeg reports as
``EPROTONOSUPPORT`` ("Protocol not supported"), a message with no hint that UDP would work.

Why not FFmpeg's own fallback (``rtsp_transport=tcp+udp`` with ``rtsp_flags=prefer_tcp``, which does
try TCP, then UDP after a 461): nothing tells the caller which transport it settled on, so it could not
be logged; two attempts of ours cost one more DESCRIBE, only for servers that refuse TCP.

UDP sockets: FFmpeg's rtsp demuxer has no option to bind the RTP/RTCP sockets of unicast UDP to one
address: its ``localaddr`` option is accepted, but the sockets stay on ``0.0.0.0`` with it (measured
with PyAV 18 / FFmpeg 8.1, ``ss -uanp``); ``min_port``/``max_port`` only narrow the ports. What it does
have is ``rtsp_flags=filter_src``, which ``connect()``s each socket to the address and port the server
announced in SETUP: the kernel then delivers only the server's packets, and gives the socket the local
address of the route to the camera — ``127.0.0.1`` for a camera on loopback, the one interface that
reaches it otherwise (checked in /proc/net/udp by `tests/sources/test_rtsp_transport.py`, against VLC
and GStreamer). UDP streams are opened with it. The price: a camera whose packets come from another
port than it announced (some NAT setups) is not received over UDP; use ``tcp`` for it.
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
