"""Each stream's accounting, kept where it outlives the inference worker that writes it.

The inference worker keeps, per stream, a small memory-mapped file in the run directory's ``ledger/``
folder (a tmpfs) and updates it as it publishes and drops: the next frame index not yet accounted for
(every index below it was published or reported dropped), the next ``seq`` of the stream's messages, the
totals, and the stream's state and decoder. Writes to a shared mapping survive the process that made them,
even a SIGKILL, so a replacement worker reads exactly where the dead one stopped: ``seq`` goes on from
there, the frames the dead worker had been told of but never accounted for are reported dropped
(``inference_restart``), and the stream's state (``running``…) carries over without a new ``started``.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

_FIELDS = ("next_frame", "low", "unaccounted", "next_seq", "published", "dropped")
_TEXT = 16  # bytes for the state, and for the decoder
_SIZE = 8 * len(_FIELDS) + 2 * _TEXT


def _int_field(i: int) -> property:
    return property(lambda self: self._get(i), lambda self, value: self._set(i, value))


class LedgerRecord:
    """One stream's record: read and written like attributes, stored in the shared mapping."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _SIZE:
                os.ftruncate(fd, _SIZE)  # new: all zero
            self._map = mmap.mmap(fd, _SIZE)
        finally:
            os.close(fd)
        self._ints = memoryview(self._map)[: 8 * len(_FIELDS)].cast("q")

    def _get(self, i: int) -> int:
        return int(self._ints[i])

    def _set(self, i: int, value: int) -> None:
        self._ints[i] = value

    next_frame = _int_field(0)
    """One past the highest frame index announced to the worker."""
    low = _int_field(1)
    """The lowest frame index not accounted for (queued or in flight), or `next_frame` if none."""
    unaccounted = _int_field(2)
    """How many frames were queued or in flight."""
    next_seq = _int_field(3)
    published = _int_field(4)
    dropped = _int_field(5)

    def _text(self, n: int) -> str:
        start = 8 * len(_FIELDS) + n * _TEXT
        return self._map[start : start + _TEXT].rstrip(b"\0").decode("ascii", "replace")

    def _set_text(self, n: int, value: str) -> None:
        start = 8 * len(_FIELDS) + n * _TEXT
        self._map[start : start + _TEXT] = value.encode("ascii", "replace")[:_TEXT].ljust(_TEXT, b"\0")

    @property
    def state(self) -> str:
        return self._text(0)

    @state.setter
    def state(self, value: str) -> None:
        self._set_text(0, value)

    @property
    def decoder(self) -> str:
        return self._text(1)

    @decoder.setter
    def decoder(self, value: str) -> None:
        self._set_text(1, value)

    def close(self) -> None:
        self._ints.release()
        self._map.close()


def ledger_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "ledger"


class Ledger:
    """The ``ledger/`` folder of a run directory (`ledger_dir`): one `LedgerRecord` file per stream id."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(exist_ok=True)
        self._open: list[LedgerRecord] = []

    def record(self, stream: str) -> LedgerRecord:
        """`stream`'s record (made, all zero, if it has none: a stream id is a safe file name)."""
        rec = LedgerRecord(self.folder / stream)
        self._open.append(rec)
        return rec

    def streams(self) -> Iterator[str]:
        """The streams that have a record, e.g. left by a previous inference worker."""
        return iter(sorted(p.name for p in self.folder.iterdir() if p.is_file()))

    def forget(self, stream: str) -> None:
        """Remove `stream`'s record (the stream was removed from the config)."""
        (self.folder / stream).unlink(missing_ok=True)

    def close(self) -> None:
        for rec in self._open:
            rec.close()
        self._open.clear()


__all__ = ["Ledger", "LedgerRecord", "ledger_dir"]
