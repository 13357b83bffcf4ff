"""Where yolostream keeps files of its own: the user's cache directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$YOLOSTREAM_CACHE``, else ``$XDG_CACHE_HOME/yolostream``, else ``~/.cache/yolostream``."""
    explicit = os.environ.get("YOLOSTREAM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "yolostream"
