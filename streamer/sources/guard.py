"""Corrupt input contained where it enters: a demuxer and a per-packet error count that never raise a bug.

FFmpeg is robust against corrupt data; PyAV's Python layer around it is less so. Measured with PyAV 18
on clips with 1 % of their bytes flipped: MPEG-TS files whose corrupt tables made streams appear
mid-file raise `IndexError` out of ``container.demux`` once the file ends (its flush loop walks streams it
never registered), Matroska and MP4 headers raise `UnicodeDecodeError` from their metadata, and any
exception out of PyAV would end the source worker (to be restarted, to fail the same way again).

`guarded_packets` is the demux loop of both decoders (`cpu.PyAvSource`, `nvdec.NvdecSource`): it hands
out the stream's packets, ends with one empty packet (flush the decoder), and turns invalid data and
every exception of PyAV's own into a counted, logged error (`BadInput`), after which demuxing goes on
from where the container stands (FFmpeg's timeouts and I/O errors are the caller's to report).
`BadInput` is also what each decoder counts its undecodable packets with: after `budget` failures in a
row the stream is given up with `BadInput.give_up` (a `SourceFormatError` for a file: an ``error``
event; a retryable `SourceError` for a live stream, which the source worker reconnects for ever).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import av
import av.error

from streamer.errors import SourceError, SourceFormatError
from streamer.sources.base import redact

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0
"""At most one warning per stream and kind of error this often (the first one at once)."""


class BadInput:
    """The failures of one kind (demux, decode, NVDEC...) of one stream: counted, logged at a bounded rate.

    `failed` records one and raises `give_up`'s error once `budget` happened in a row; `ok` ends a run.
    The error is `error` if given, else `SourceError` for a live stream and `SourceFormatError` for a file.
    """

    def __init__(
        self,
        stream_id: str,
        url: str,
        what: str,
        *,
        live: bool,
        budget: int,
        error: type[SourceError] | None = None,
        interval_s: float = LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream_id, self.url, self.what, self.live = stream_id, url, what, live
        self.budget = budget
        self.error = error or (SourceError if live else SourceFormatError)
        self.interval_s = interval_s
        self._clock = clock
        self.total = 0
        self.consecutive = 0
        self._logged_at: float | None = None
        self._unlogged = 0

    def failed(self, exc: BaseException) -> None:
        """Count `exc` (logged, or summed into the next log line); raise once the budget is spent."""
        self.total += 1
        self.consecutive += 1
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= self.interval_s:
            since = f", {self._unlogged} more since the last report" if self._unlogged else ""
            log.warning(
                "stream %s: %s (%d so far%s): %s",
                self.stream_id, self.what, self.total, since, self._describe(exc),
            )  # fmt: skip
            self._logged_at, self._unlogged = now, 0
        else:
            self._unlogged += 1
        if self.consecutive >= self.budget:
            error = self.give_up(f"{self.consecutive} in a row: {self.what}", exc)
            if self.live:  # without its cause: FFmpeg's exceptions carry the URL (and its password)
                raise error from None
            raise error from exc

    def ok(self) -> None:
        self.consecutive = 0

    def give_up(self, message: str, exc: BaseException) -> SourceError:
        """The error that ends this stream (or this connection, for a live one); the text has no password."""
        text = f"{message}: {self._describe(exc)}"
        return self.error(self.stream_id, text)

    def _describe(self, exc: BaseException) -> str:
        # FFmpeg's errors say what they are; anything else is PyAV tripping over the data: name the type.
        text = str(exc) if isinstance(exc, av.error.FFmpegError) else f"{type(exc).__name__}: {exc}"
        return redact(text, self.url)


def guarded_packets(
    container: av.container.InputContainer, stream: Any, bad: BadInput
) -> Iterator[av.Packet]:
    """The packets of `stream` with data, then one empty packet; an exception of the demuxer is `bad`.

    FFmpeg's errors other than invalid data (a read timeout, a reset connection, an I/O error) pass
    through: the caller knows what they mean. After invalid data or any exception of PyAV's own,
    demuxing resumes from the container's current position; `bad`'s budget bounds a demuxer that fails
    without moving on. PyAV's own flush packets are not passed on: the first one means the
    input ended, and walking on into its flush loop is where corrupt MPEG-TS raises `IndexError`.
    """
    while True:
        packets: Generator[av.Packet, None, None] = container.demux(stream)  # type: ignore[assignment]
        try:
            for packet in packets:
                if not packet.size:
                    break
                bad.ok()
                yield packet
            break
        except av.error.EOFError:
            break
        except av.error.InvalidDataError as exc:
            bad.failed(exc)
        except av.error.FFmpegError:  # a timeout, the network, the disk: not the data's fault
            raise
        except Exception as exc:  # PyAV tripping over corrupt data must never end the worker
            bad.failed(exc)
        finally:
            packets.close()
    flush = av.Packet()  # bound to the stream as PyAV's own: the frames it drains keep their time base
    flush.stream = stream
    flush.time_base = stream.time_base
    yield flush
