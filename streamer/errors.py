"""The exception hierarchy and the process exit codes.

Errors say what went wrong and what to do. Retryable problems with a stream (`SourceError`) subclass the
matching builtin so generic handlers (`except ConnectionError`) work; a `ConfigError` is fatal and means
"do not restart until the file is fixed".
"""

from __future__ import annotations

from dataclasses import dataclass

# Exit codes of `yolostream` commands. systemd units treat EXIT_CONFIG as "do not restart".
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_USAGE = 2
"""Invalid arguments, as argparse exits (the same code as EXIT_CONFIG: what the user gave is wrong)."""

# Exit codes of a source worker process, read by the supervisor (`streamer.daemon.processes`).
EXIT_SOURCE_FAILED = 3
"""The source failed and its worker already published the error event (no second report)."""
EXIT_SOURCE_STALLED = 4
"""The decoder blocked past its timeouts and the watchdog ended the worker (`streamer.sources.watchdog`):
a stuck network call, not a bug in the stream. Retryable: the worker is restarted."""


class YolostreamError(Exception):
    """Base class of every error this package raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file: where (key path and YAML line) and what."""

    key: str
    """Dotted key path, e.g. ``sources[1].fps_limit``; empty for the document itself."""
    line: int | None
    """1-based line in the YAML file, when known."""
    message: str

    def format(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line is not None else filename
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class ConfigError(YolostreamError, ValueError):
    """The configuration is invalid. Fatal: fix the file, restarting will not help."""

    def __init__(self, filename: str, problems: list[ConfigProblem]) -> None:
        self.filename = filename
        self.problems = problems
        super().__init__("\n".join(p.format(filename) for p in problems))


class ModelError(YolostreamError, RuntimeError):
    """A model file is missing, unreadable or not a YOLO detector this package understands."""


class EngineError(YolostreamError, RuntimeError):
    """An inference backend could not be loaded or failed while running."""


class SourceError(YolostreamError, ConnectionError):
    """A stream could not be opened or read. Usually retryable (the camera may come back)."""

    def __init__(self, stream: str, message: str) -> None:
        self.stream = stream
        super().__init__(f"stream {stream!r}: {message}")


class SourceFormatError(SourceError):
    """The stream's data cannot be decoded (unsupported codec, corrupt container). Not retryable."""
