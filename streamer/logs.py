"""Logging: one logger per module; worker processes log through a queue to the supervisor's handlers.

Text lines are journald-friendly (no timestamps when running under systemd, which adds its own);
``logging.format: json`` prints one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from typing import Any

_TEXT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"
_TEXT_JOURNAL = "%(levelname)s %(processName)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "process": record.processName,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def make_handler(fmt: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        under_journal = "JOURNAL_STREAM" in os.environ
        handler.setFormatter(logging.Formatter(_TEXT_JOURNAL if under_journal else _TEXT))
    return handler


def setup_main(level: str = "INFO", fmt: str = "text") -> logging.Handler:
    """Configure the supervisor's root logger; returns the handler for the children's queue listener."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = make_handler(fmt)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


def setup_child(queue: Any, level: str) -> None:
    """In a worker process: send every record to the supervisor through `queue`."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.handlers.QueueHandler(queue))
    root.setLevel(level.upper())
