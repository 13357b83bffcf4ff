"""This daemon as a member of its fleet."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streamer.config import FleetConfig


def daemon_name(cfg: FleetConfig) -> str:
    """``fleet.daemon``, or this host's name."""
    return cfg.daemon or socket.gethostname().split(".")[0] or "yolostream"
