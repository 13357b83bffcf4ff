"""The streams' pictures over HTTP, served by the metrics endpoint's threads
(`streamer.observability.endpoint`):

- ``/``: a page listing the streams, each with its state and its picture (refreshed every second);
- ``/streams/<id>/latest.jpg``: the stream's latest frame with its boxes, zones and lines;
- ``/streams/<id>/live``: the same as an MJPEG stream (``multipart/x-mixed-replace``), `FPS` a second.

A request asks the inference worker for pictures (`streamer.observability.picture.request`) and waits for a
fresh one; drawing and JPEG encoding happen here, in the request's thread, never in the inference worker.
"""

from __future__ import annotations

import html
import re
import time
from typing import TYPE_CHECKING, Any

from streamer.observability.picture import FPS, draw, jpeg, read_picture, request

if TYPE_CHECKING:
    from pathlib import Path

    from streamer.observability.picture import PictureHeader

_ROUTE = re.compile(r"/streams/([A-Za-z0-9][A-Za-z0-9_-]*)/(latest\.jpg|live)")
FRESH_S = 1.0
"""A picture written within this long is served as it is."""
WAIT_S = 4.0
"""How long a request waits for a fresh picture before it takes an older one (a stream that ended)."""
BOUNDARY = "yolostream-frame"


def serve(handler: Any, path: str) -> None:
    """Answer `path` (``/`` or ``/streams/...``) on `handler`, the endpoint's `_Handler`."""
    server = handler.server
    snap = server.snapshot()
    if path == "/":
        handler._send(200, "text/html; charset=utf-8", page(snap.streams).encode(), cache=False)
        return
    found = _ROUTE.fullmatch(path)
    if found is None or found.group(1) not in snap.streams:
        handler._send(404, "text/plain; charset=utf-8", b"no such stream (see / for the list)\n")
        return
    stream, what = found.groups()
    if server.pictures is None:
        handler._send(404, "text/plain; charset=utf-8", b"pictures are off\n")
        return
    if what == "live":
        _live(handler, server.pictures, stream)
        return
    picture = latest(server.pictures, stream)
    if picture is None:
        why = (
            f"no picture of stream {stream!r} yet: it has not delivered a frame in {WAIT_S:.0f} s, or it is "
            "decoded by NVDEC (whose frames stay on the GPU)\n"
        )
        handler._send(503, "text/plain; charset=utf-8", why.encode())
        return
    header = picture[0]
    about = {"X-Yolostream-Frame": str(header.frame), "X-Yolostream-Capture-Ts": f"{header.capture_ts:.3f}"}
    handler._send(200, "image/jpeg", jpeg(draw(*picture)), cache=False, headers=about)


def latest(directory: Path, stream: str, wait_s: float = WAIT_S) -> tuple[PictureHeader, Any] | None:
    """The stream's picture, fresh if one comes within `wait_s`, else the last one there is (or None)."""
    request(directory, stream)
    deadline = time.monotonic() + wait_s
    while True:
        picture = read_picture(directory, stream)
        if picture is not None and time.time() - picture[0].written <= FRESH_S:
            return picture
        if time.monotonic() >= deadline:
            return picture
        time.sleep(0.05)


def _live(handler: Any, directory: Path, stream: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
    last = None
    try:
        while not handler.server.closing.is_set():
            request(directory, stream)
            picture = read_picture(directory, stream)
            if picture is not None and (picture[0].frame, picture[0].written) != last:
                last = (picture[0].frame, picture[0].written)
                body = jpeg(draw(*picture))
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n"
                handler.wfile.write(head.encode() + body + b"\r\n")
                handler.wfile.flush()
            time.sleep(1 / FPS)
    except (BrokenPipeError, ConnectionResetError):  # the viewer went away
        return


def page(streams: dict[str, str] | Any) -> str:
    """The ``/`` page: one card per stream (its id, state and picture)."""
    cards = []
    for sid, state in streams.items():
        s = html.escape(sid)
        cards.append(
            f'<figure class="stream" id="stream-{s}" data-stream="{s}">'
            f'<img src="/streams/{s}/latest.jpg" alt="stream {s}">'
            f'<figcaption><b>{s}</b> <span class="state">{html.escape(state)}</span> '
            f'<span class="size"></span> <a href="/streams/{s}/live">live</a></figcaption></figure>'
        )
    body = "".join(cards) or "<p>no streams</p>"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>yolostream</title>
<style>
body {{ font-family: sans-serif; background: #111; color: #ddd; margin: 1em; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; vertical-align: top; }}
img {{ max-width: 640px; max-height: 480px; display: block; background: #222; }}
a {{ color: #8cf; }} .state {{ color: #9d9; }}
</style></head>
<body><h1>yolostream</h1>
<p>{len(streams)} stream(s) &middot; <a href="/metrics">metrics</a> &middot; <a href="/readyz">readyz</a></p>
{body}
<script>
// Each picture: its size once decoded, and a new one a second after the last arrived.
for (const fig of document.querySelectorAll("figure.stream")) {{
  const img = fig.querySelector("img"), size = fig.querySelector(".size");
  const again = (ms) => setTimeout(() => {{
    img.src = "/streams/" + fig.dataset.stream + "/latest.jpg?t=" + Date.now();
  }}, ms);
  img.addEventListener("load", () => {{
    size.textContent = img.naturalWidth + "x" + img.naturalHeight;
    again(1000);
  }});
  img.addEventListener("error", () => again(3000));
}}
</script>
</body></html>
"""


__all__ = ["latest", "page", "serve"]
