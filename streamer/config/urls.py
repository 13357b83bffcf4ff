"""Stream URLs in the config: their scheme and port as written, and their form with secrets redacted
(for logs and error messages)."""

from __future__ import annotations

import re

LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "http", "https", "rtmp"})
"""URL schemes of network streams; anything else must be a local file (a path or a ``file:`` URL)."""
_SECRET_QUERY = re.compile(r"(?i)([?&][^=&#]*(?:pass|pwd|token|secret|key|auth|sig)[^=&#]*=)[^&#]*")


def redact_url(url: str) -> str:
    """`url` with its password (and secret-looking query values) replaced by ``***``, for logs."""
    scheme, sep, rest = url.partition("://")
    if sep:
        at = rest.rfind("@")  # the last '@': a password may itself contain '@', '/' or ':'
        user, colon, _ = rest[:at].partition(":") if at >= 0 else ("", "", "")
        if colon and "/" not in user:
            rest = f"{user}:***{rest[at:]}"
        url = f"{scheme}{sep}{rest}"
    return _SECRET_QUERY.sub(r"\1***", url)


def url_port(url: str) -> str | None:
    """The port as written in a URL's authority, or None. The host starts after the last '@' (as in
    `redact_url`: a password may hold '@', '/' or ':'), and ends at the first '/', '?' or '#' after it."""
    rest = url.partition("://")[2]
    at = rest.rfind("@")
    host = re.split(r"[/?#]", rest[at + 1 :], maxsplit=1)[0]
    if host.startswith("["):  # [IPv6]:port
        host = host.partition("]")[2]
    return host.rpartition(":")[2] if ":" in host else None


def url_scheme(url: str) -> str:
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    return match.group(1).lower() if match else ""
