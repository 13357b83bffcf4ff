"""The CPU decoder: PyAV (FFmpeg) demuxes and decodes files and network streams into RGB frames."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar
from urllib.parse import unquote, urlsplit

import av
import av.error

from streamer.errors import SourceError, SourceFormatError
from streamer.samples import sample_path
from streamer.sources import rtsp
from streamer.sources.base import DecodedFrame, DeviceFrame, SourceInfo, redact
from streamer.sources.guard import BadInput, guarded_packets

log = logging.getLogger(__name__)
_F = TypeVar("_F", DecodedFrame, DeviceFrame)

# A stream whose packets fail to decode this many times in a row is considered undecodable.
MAX_CONSECUTIVE_DECODE_ERRORS = 50
# A demuxer that fails this many times in a row without handing out a packet has given up on the input.
MAX_CONSECUTIVE_DEMUX_ERRORS = 20
OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0


class _TcpRefused(SourceError):
    """The RTSP server refused RTP over TCP (`sources.rtsp.refused_tcp`)."""


def _ffmpeg_target(url: str) -> str:
    """What to hand FFmpeg: a plain path for ``file:`` URLs and samples, the URL itself otherwise."""
    parts = urlsplit(url)
    if parts.scheme == "sample":
        return str(sample_path(parts.path))
    return unquote(parts.path) if parts.scheme == "file" else url


class PyAvSource:
    """Decodes one stream with PyAV. `loop` replays a file forever, continuing index and pts.

    A `live` stream (a network URL) fails with a retryable `SourceError` for every problem, its end
    included (a camera does not end: the server went away); the worker reconnects. A file fails with a
    `SourceFormatError` when its data is bad. Error messages never contain the URL's password. Corrupt
    data is contained in `sources.guard`; RTSP's `transport` (``auto``, ``tcp``, ``udp``) in `sources.rtsp`.

    Timeouts (measured with PyAV 18 against a GStreamer RTSP server): a server that accepts the connection
    and says nothing fails the open after `open_timeout_s`; a killed server ends the stream at once
    (TCP reset); a server that stops sending makes FFmpeg's first interrupted read hand out the frame its
    RTP depacketiser was holding and the second fail, so FFmpeg is armed with half of `read_timeout_s`
    for live streams: a stall is detected within `read_timeout_s` of the last packet.
    """

    def __init__(
        self,
        stream_id: str,
        url: str,
        *,
        loop: bool = False,
        live: bool = False,
        transport: str = "auto",
        open_timeout_s: float = OPEN_TIMEOUT_S,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.stream_id = stream_id
        self.url = url
        self.loop = loop
        self.live = live
        self.transport = transport
        self.chosen_transport: str | None = None
        """The RTSP transport of the last connection (``tcp`` or ``udp``); None before one / not RTSP."""
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.info: SourceInfo | None = None
        self.decode_errors = 0
        self._container: av.container.InputContainer | None = None

    def _fail(self, message: str, exc: BaseException, fmt: bool = False) -> NoReturn:
        """Raise a `SourceError` (`SourceFormatError` if `fmt`, for files) whose text has no credentials.

        For live URLs it is raised without its cause: FFmpeg's exceptions carry the URL as their filename.
        """
        text = redact(f"{message}: {getattr(exc, 'strerror', None) or exc}", self.url)
        if self.live:
            raise SourceError(self.stream_id, text) from None
        raise (SourceFormatError if fmt else SourceError)(self.stream_id, text) from exc

    def _open_container(self) -> av.container.InputContainer:
        if not rtsp.is_rtsp(self.url):
            return self._open_once({}, self.open_timeout_s)
        tries = rtsp.attempts(self.transport)
        started = time.monotonic()
        for transport in tries:
            left = self.open_timeout_s - (time.monotonic() - started)  # (the watchdog allows no more)
            try:
                container = self._open_once(rtsp.ffmpeg_options(transport), max(left, 1.0))
            except _TcpRefused:
                if transport == tries[-1]:
                    raise SourceError(
                        self.stream_id, f"cannot open: {rtsp.REFUSED_TCP}; set transport: udp (or auto)"
                    ) from None
                continue
            except SourceError as exc:
                if transport == tries[0]:
                    raise
                reason = str(exc).removeprefix(f"stream {self.stream_id!r}: ")
                raise SourceError(self.stream_id, f"over UDP ({rtsp.REFUSED_TCP}): {reason}") from None
            if len(tries) > 1 and transport != self.chosen_transport:
                why = "the server accepts it" if transport == "tcp" else rtsp.REFUSED_TCP
                log.info("stream %s: transport auto: RTP over %s (%s)", self.stream_id, transport, why)
            self.chosen_transport = transport
            return container
        raise AssertionError("unreachable: attempts() is never empty")

    def _open_once(self, options: dict[str, str], open_timeout_s: float) -> av.container.InputContainer:
        read_timeout = self.read_timeout_s / 2 if self.live else self.read_timeout_s
        started = time.monotonic()
        try:
            container = av.open(
                _ffmpeg_target(self.url), options=options, timeout=(open_timeout_s, read_timeout)
            )
        except FileNotFoundError as exc:
            if self.live:
                self._fail("cannot open", exc)
            raise SourceFormatError(self.stream_id, f"file not found: {_ffmpeg_target(self.url)}") from exc
        except (av.error.FFmpegError, OSError) as exc:
            if self.live and time.monotonic() - started >= open_timeout_s * 0.95:
                # FFmpeg reports an interrupted open as "invalid data": say what happened instead.
                raise SourceError(
                    self.stream_id, f"no answer from the server in {open_timeout_s:g} s (open_timeout_s)"
                ) from None
            if options.get("rtsp_transport") == "tcp" and rtsp.refused_tcp(exc):
                raise _TcpRefused(self.stream_id, rtsp.REFUSED_TCP) from None
            if isinstance(exc, av.error.InvalidDataError):
                self._fail("not a readable video (corrupt or unknown container)", exc, fmt=True)
            self._fail("cannot open", exc)
        except Exception as exc:  # PyAV tripped over a corrupt header (e.g. its metadata)
            self._fail(f"not a readable video (corrupt header: {type(exc).__name__})", exc, fmt=True)
        try:
            return self._video_track(container)
        except SourceError:
            container.close()
            raise
        except Exception as exc:  # as above, from the stream's header
            container.close()
            self._fail(f"not a readable video (corrupt header: {type(exc).__name__})", exc, fmt=True)

    def _video_track(self, container: av.container.InputContainer) -> av.container.InputContainer:
        """`container`, its first video track set up for decoding; raises if it has none we can decode."""
        error = SourceError if self.live else SourceFormatError
        if not container.streams.video:
            raise error(self.stream_id, "no video track in the input")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise error(self.stream_id, "no decoder for the codec of its video track")
        # Each stream has its own process, so streams decode in parallel already; FFmpeg's frame
        # threads would add CPU overhead for no gain up to 1080p. Larger pictures get them, so that one
        # 4K stream keeps up in real time.
        if stream.codec_context.width * stream.codec_context.height > 1920 * 1088:
            stream.thread_type = "AUTO"
        else:
            stream.codec_context.thread_count = 1
        return container

    def open(self) -> SourceInfo:
        self._container = self._open_container()
        stream = self._container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        self.info = SourceInfo(
            codec=stream.codec_context.name, width=stream.codec_context.width,
            height=stream.codec_context.height, fps=float(rate) if rate else None, decoder="cpu",
        )  # fmt: skip
        return self.info

    def frames(self) -> Iterator[DecodedFrame]:
        return self._looped(
            self._rgb_pass,
            lambda: SourceFormatError(self.stream_id, "no decodable frame in the file; cannot loop it"),
        )

    def _rgb_pass(self, container: av.container.InputContainer, pts_offset: float) -> Iterator[DecodedFrame]:
        bad = self._bad("a decoded picture cannot be converted to RGB", MAX_CONSECUTIVE_DECODE_ERRORS)
        for frame in self._decode(container):
            try:
                image = frame.to_ndarray(format="rgb24")
            except Exception as exc:  # e.g. a pixel format a corrupt header made up
                self.decode_errors += 1
                bad.failed(exc)
                continue
            bad.ok()
            pts = None if frame.time is None else frame.time + pts_offset
            yield DecodedFrame(image, 0, pts, time.time())

    def _looped(
        self,
        one_pass: Callable[[av.container.InputContainer, float], Iterator[_F]],
        nothing_decoded: Callable[[], Exception],
    ) -> Iterator[_F]:
        """The frames of `one_pass` over the input (frames given pts + `pts_offset`), numbered; a file with
        `loop` is rewound and passed over again, its pts continuing one frame interval after the last."""
        if self._container is None:
            self.open()
        index = 0
        pts_offset = 0.0
        while True:
            last_pts: float | None = None
            for frame in one_pass(self._container, pts_offset):  # type: ignore[arg-type]
                frame.index = index
                yield frame
                index += 1
                last_pts = frame.pts
            if self.live:
                raise SourceError(self.stream_id, "the stream ended (the server closed the connection)")
            if not self.loop:
                return
            if index == 0:
                raise nothing_decoded()
            fps = self.info.fps if self.info and self.info.fps else 25.0
            pts_offset = (last_pts if last_pts is not None else pts_offset) + 1.0 / fps
            self._rewind()

    def _rewind(self) -> None:
        """Back to the start of the file, for the next loop.

        A seek, not a new open: opening probes the file again (about 50 ms for a 1080p H.264 file, a tenth
        of the time when NVDEC decodes a 10 s clip at 600 frames/s). A file that cannot seek is re-opened.
        """
        container = self._container
        assert container is not None
        try:
            container.seek(0)
            container.streams.video[0].codec_context.flush_buffers()  # it was drained at the end
        except Exception as exc:  # FFmpeg's errors, or PyAV's on a corrupt file
            log.info("stream %s: cannot seek to the start (%s); opening the file again", self.stream_id, exc)
            container.close()
            self._container = self._open_container()

    def _decode(self, container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
        stream = container.streams.video[0]
        bad = self._bad("undecodable packet", MAX_CONSECUTIVE_DECODE_ERRORS)
        truncated = False
        for packet in self._packets(container, stream):
            if packet.size:  # not the empty packet that flushes the decoder at the end
                # The demuxer flags a packet it could not read whole; the last one: the file was cut.
                truncated = packet.is_corrupt
            try:
                frames = packet.decode()
            except av.error.EOFError:
                break
            except Exception as exc:  # a bad packet is counted and skipped, never a crash
                self.decode_errors += 1
                bad.failed(exc)
                continue
            bad.ok()
            yield from frames
        if truncated and not self.live:
            raise SourceFormatError(self.stream_id, "the file is truncated: its last packet is incomplete")

    def _bad(self, what: str, budget: int, error: type[SourceError] | None = None) -> BadInput:
        """A count of one kind of failure of this stream (`sources.guard`), for one pass over it."""
        return BadInput(self.stream_id, self.url, what, live=self.live, budget=budget, error=error)

    def _packets(self, container: av.container.InputContainer, stream: Any) -> Iterator[av.Packet]:
        """The stream's packets (an empty one last) through `guarded_packets`; a read timeout or an I/O
        error is a SourceError (live) or SourceFormatError (file)."""
        bad = self._bad("the demuxer failed", MAX_CONSECUTIVE_DEMUX_ERRORS)
        try:
            yield from guarded_packets(container, stream, bad)
        except av.error.ExitError as exc:  # PyAV's read timeout interrupted FFmpeg
            if self.live:
                raise SourceError(
                    self.stream_id,
                    f"no data for {self.read_timeout_s:g} s (read_timeout_s): the stream stalled",
                ) from None
            self._fail("read timed out", exc, fmt=True)
        except av.error.FFmpegError as exc:  # the network or the disk
            self._fail("read failed", exc, fmt=True)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
