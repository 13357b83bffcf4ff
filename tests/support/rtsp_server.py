"""A small RTSP server for tests: GStreamer's, from Debian's packages. Run it with the SYSTEM python:

    /usr/bin/python3 tests/support/rtsp_server.py --port 8554 /cam=clip.ts [/other=other.ts ...]

Each mount serves the H.264 track of an MPEG-TS file, looped forever at its own frame rate (an MPEG-TS
file loops with ``multifilesrc loop=true``; an MP4's ``qtdemux`` cannot). Media are shared: every client
of a mount sees the same stream. Listens on 127.0.0.1 (``--port 0``: a free port) and prints
``ready <port>`` once it serves. It needs ``gir1.2-gst-rtsp-server-1.0``, ``python3-gi`` and
``gstreamer1.0-plugins-{base,good,bad}``; `tests.support.rtsp` starts, kills and restarts it.
"""

from __future__ import annotations

import argparse
import sys

import gi  # type: ignore[import-not-found]

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-not-found]  # noqa: E402

LAUNCH = '( multifilesrc location="{path}" loop=true ! tsdemux ! h264parse ! rtph264pay name=pay0 pt=96 )'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("mounts", nargs="+", metavar="/MOUNT=FILE.ts")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    for spec in args.mounts:
        mount, _, path = spec.partition("=")
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(LAUNCH.format(path=path))
        factory.set_shared(True)
        server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    print("ready", server.get_bound_port(), flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
