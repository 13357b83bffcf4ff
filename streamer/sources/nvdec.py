"""The GPU decoder: PyAV demuxes, NVDEC (PyNvVideoCodec) decodes into device memory, NV12 frames out.

Why PyAV's demuxer rather than PyNvVideoCodec's: the same FFmpeg demuxer is behind both, but PyAV's is
the one `sources.cpu.PyAvSource` already drives with everything a camera needs — RTSP over TCP/UDP,
open and read timeouts that cannot hang the worker, errors without the camera's password, truncated
files, looping — and it reports the stream's colour matrix and range, which the letterbox kernel needs.
So `NvdecSource` *is* a `PyAvSource` whose packets go to NVDEC instead of FFmpeg's decoder: after the
``h264_mp4toannexb`` / ``hevc_mp4toannexb`` bitstream filter (NVDEC's parser takes Annex B; the filter
passes Annex B input such as RTSP through unchanged), each packet's bytes are handed to
``PyNvVideoCodec``'s decoder as a ``PacketData`` (address, size, pts). The reconnect logic of the source
worker is untouched, and switching a stream to the CPU decoder only swaps the decode step.

Frames come out as `DeviceFrame`s: device addresses of the decoder's NV12 planes, valid until the next
frame is asked for (the source worker copies them into its CUDA ring first), with the pts of the packet
they came from (NVDEC carries it through), in display order.

NVDEC is not tried for codecs it lacks or pictures the kernel does not take (anything but 8-bit 4:2:0):
`DecoderUnavailable` is raised at once, and `sources.fallback.FallbackSource` moves the stream to the CPU
decoder. The same happens when no decoder session can be created, and after `MAX_HARDWARE_ERRORS`
packets in a row fail to decode. A single bad packet is counted, logged (at a bounded rate), and skipped;
demuxing and the Annex B filter are contained as on the CPU path (`sources.guard`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np

from streamer.errors import SourceError
from streamer.sources.base import DeviceFrame, SourceInfo, redact
from streamer.sources.cpu import MAX_CONSECUTIVE_DECODE_ERRORS, PyAvSource
from streamer.sources.guard import BadInput

log = logging.getLogger(__name__)

# FFmpeg codec name → PyNvVideoCodec's cudaVideoCodec member. Other codecs go to the CPU decoder.
NVDEC_CODECS = {"h264": "H264", "hevc": "HEVC", "av1": "AV1", "vp9": "VP9"}
_ANNEXB_FILTERS = {"h264": "h264_mp4toannexb", "hevc": "hevc_mp4toannexb"}
_PIXEL_FORMATS = ("yuv420p", "yuvj420p")
MAX_HARDWARE_ERRORS = 10
"""Packets in a row that NVDEC fails on before the stream moves to the CPU decoder."""
LUMA_SAMPLE_ROWS = 72
"""Rows of luma copied to the host for frozen-picture detection (its 16×9 signature needs few)."""


class DecoderUnavailable(SourceError):
    """NVDEC cannot decode this stream (codec, profile, no free session, hardware errors): use the CPU."""


def nvdec_usable() -> str | None:
    """Why NVDEC cannot be used on this machine, or None if it can (checked without creating anything)."""
    if not (Path("/proc/driver/nvidia/version").exists() or any(Path("/dev").glob("nvidia[0-9]*"))):
        return "no NVIDIA driver is loaded"
    for module in ("PyNvVideoCodec", "cuda"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'yolostream[gpu]')"
    return None


class NvdecSource(PyAvSource):
    """Decodes one stream with NVDEC; yields `DeviceFrame`s. Same arguments as `PyAvSource`, plus `device`."""

    def __init__(self, stream_id: str, url: str, *, device: int = 0, **options: Any) -> None:
        super().__init__(stream_id, url, **options)
        self.device = device
        self.hardware_errors = 0
        self._nvc: Any = None
        self._decoder: Any = None
        self._stream: Any = None
        self._cudart: Any = None
        self._colour = (2, 0)

    def _unavailable(self, reason: str) -> DecoderUnavailable:
        return DecoderUnavailable(self.stream_id, redact(reason, self.url))

    def open(self) -> SourceInfo:
        info = super().open()
        ctx = self._container.streams.video[0].codec_context  # type: ignore[union-attr]
        if info.codec not in NVDEC_CODECS:
            self.close()
            raise self._unavailable(f"codec {info.codec} is not decoded with NVDEC here")
        if ctx.pix_fmt not in _PIXEL_FORMATS:
            self.close()
            raise self._unavailable(f"pixel format {ctx.pix_fmt} (only 8-bit 4:2:0 goes through NVDEC)")
        self._colour = (int(ctx.colorspace or 2), int(ctx.color_range or 0))
        if self._decoder is None:
            try:
                self._create_decoder(info.codec)
            except DecoderUnavailable:
                self.close()
                raise
        self.info = replace(info, decoder="nvdec")
        return self.info

    def _create_decoder(self, codec: str) -> None:
        try:
            self._nvc = importlib.import_module("PyNvVideoCodec")
            from streamer.cuda.runtime import check, load_cudart

            cudart = self._cudart = load_cudart()
            check(cudart.cudaSetDevice(self.device), "cudaSetDevice")
            check(cudart.cudaFree(0), "context initialisation")
            driver = importlib.import_module("cuda.bindings.driver")
            err, context = driver.cuCtxGetCurrent()
            if err != driver.CUresult.CUDA_SUCCESS:
                raise RuntimeError(f"cuCtxGetCurrent: {err}")
            self._stream = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "stream")
            self._decoder = self._nvc.CreateDecoder(
                gpuid=self.device,
                codec=getattr(self._nvc.cudaVideoCodec, NVDEC_CODECS[codec]),
                cudacontext=int(context),
                cudastream=int(self._stream),
                usedevicememory=True,
            )
        except Exception as exc:  # PyNvVideoCodec raises its own types (e.g. no free session)
            raise self._unavailable(f"cannot create an NVDEC decoder: {exc}") from exc

    def frames(self) -> Iterator[DeviceFrame]:  # type: ignore[override]
        nothing = "NVDEC decoded no frame of the file"
        return self._looped(self._decode_device, lambda: self._unavailable(nothing))

    def _decode_device(
        self, container: av.container.InputContainer, pts_offset: float
    ) -> Iterator[DeviceFrame]:
        stream = container.streams.video[0]
        time_base = float(stream.time_base) if stream.time_base else None
        nvdec = self._bad("NVDEC failed on a packet", MAX_HARDWARE_ERRORS, error=DecoderUnavailable)
        # (Annex B conversion giving up is NVDEC's input path giving up: the CPU decoder gets its turn.)
        bsf = self._bad(
            "a packet cannot be converted to Annex B", MAX_CONSECUTIVE_DECODE_ERRORS, error=DecoderUnavailable
        )
        for packet in annexb_packets(self._packets(container, stream), stream, bsf):
            try:
                decoded = self._decoder.Decode(self._packet_data(packet))
            except Exception as exc:  # PyNvVideoCodec raises its own types
                self.hardware_errors += 1
                nvdec.failed(exc)  # DecoderUnavailable after MAX_HARDWARE_ERRORS in a row: the CPU takes over
                continue
            nvdec.ok()
            for frame in decoded:
                yield self._device_frame(frame, time_base, pts_offset)

    def _packet_data(self, packet: av.Packet) -> Any:
        data = self._nvc.PacketData()
        if packet.size:
            buffer = np.frombuffer(memoryview(packet), dtype=np.uint8)
            data.bsl_data = int(buffer.ctypes.data)  # read synchronously by Decode, before we return
            data.bsl = int(buffer.size)
        else:
            data.bsl = 0  # end of stream: NVDEC hands out the pictures it still holds
        if packet.pts is not None:
            data.pts = int(packet.pts)
        return data

    def _device_frame(self, frame: Any, time_base: float | None, pts_offset: float) -> DeviceFrame:
        y_ptr, uv_ptr, pitch, width, height = _planes(frame)
        if self.info is not None:
            width, height = self.info.width, self.info.height  # the display size (planes may be padded)
        raw_pts = getattr(frame, "timestamp", None)
        pts = None if raw_pts is None or time_base is None else raw_pts * time_base + pts_offset
        sample = self._luma_sampler(y_ptr, pitch, width, height)
        return DeviceFrame(
            index=0, pts=pts, width=width, height=height, y_ptr=y_ptr, uv_ptr=uv_ptr, pitch=pitch,
            stream=int(self._stream), colorspace=self._colour[0], color_range=self._colour[1],
            capture_time=time.time(), luma_sample=sample,
        )  # fmt: skip

    def _luma_sampler(self, y_ptr: int, pitch: int, width: int, height: int) -> Any:
        cudart, stream = self._cudart, self._stream

        def sample() -> np.ndarray:
            from streamer.cuda.runtime import check

            step = max(1, height // LUMA_SAMPLE_ROWS)
            out = np.empty((height // step, width), np.uint8)
            check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            check(
                cudart.cudaMemcpy2D(out.ctypes.data, width, y_ptr, pitch * step, width, out.shape[0], kind),
                "copy",
            )
            return out

        return sample

    def close(self) -> None:
        """Close the connection and its decoder (a reconnect creates both again)."""
        super().close()
        self._decoder = None
        if self._stream is not None and self._cudart is not None:
            self._cudart.cudaStreamSynchronize(self._stream)
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None


def annexb_packets(
    packets: Iterator[av.Packet], stream: Any, bad: BadInput | None = None
) -> Iterator[av.Packet]:
    """`packets` of `stream` in Annex B (what NVDEC's parser reads), ending with one empty packet.

    H.264 / HEVC from MP4 or Matroska (length-prefixed NAL units, parameter sets in the extradata) go
    through FFmpeg's ``*_mp4toannexb`` filter, which passes Annex B input (RTSP, MPEG-TS) unchanged. A
    packet the filter rejects (corrupt length prefixes) is counted in `bad` and skipped, a filter that
    cannot be set up (corrupt extradata) is `bad`'s give-up error; without `bad`, the filter's exceptions
    are raised.
    """
    name = _ANNEXB_FILTERS.get(stream.codec_context.name)
    try:
        bsf = av.BitStreamFilterContext(name, stream) if name else None
    except Exception as exc:  # the filter parses the extradata, which may be corrupt
        if bad is None:
            raise
        raise bad.give_up(f"cannot set up the {name} filter", exc) from exc
    for packet in packets:
        if not packet.size:
            continue
        if bsf is None:
            yield packet
            continue
        try:
            filtered = bsf.filter(packet)
        except Exception as exc:  # corrupt input is counted, never a crash
            if bad is None:
                raise
            bad.failed(exc)
            continue
        if bad is not None:
            bad.ok()
        yield from filtered
    if bsf is not None:
        try:
            yield from bsf.filter(None)
        except Exception as exc:
            if bad is None:
                raise
            bad.failed(exc)
    yield av.Packet()


def _planes(frame: Any) -> tuple[int, int, int, int, int]:
    """(y_ptr, uv_ptr, pitch, width, height) of a PyNvVideoCodec NV12 frame in device memory.

    Reads the CUDA array interface of the frame's planes (``frame.cuda()``: Y ``H × W × 1``, UV
    ``H/2 × W/2 × 2``); without it, PyNvVideoCodec's contiguous layout (pitch = width, UV after Y).
    """
    views = frame.cuda() if hasattr(frame, "cuda") else None
    if views:
        y = views[0].__cuda_array_interface__
        uv = views[1].__cuda_array_interface__ if len(views) > 1 else None
        height, width = int(y["shape"][0]), int(y["shape"][1])
        strides = y.get("strides")
        pitch = int(strides[0]) if strides else width
        y_ptr = int(y["data"][0])
        if uv is None:  # one view of the whole NV12 buffer: H * 3/2 rows
            height = height * 2 // 3
        uv_ptr = int(uv["data"][0]) if uv is not None else y_ptr + pitch * height
        if uv is not None and uv.get("strides") and int(uv["strides"][0]) != pitch:
            raise SourceError("nvdec", f"NV12 planes with different pitches ({pitch}, {uv['strides'][0]})")
        return y_ptr, uv_ptr, pitch, width, height
    width, height = int(frame.GetWidth()), int(frame.GetHeight())
    y_ptr = int(frame.GetPtrToPlane(0))
    return y_ptr, y_ptr + width * height, width, width, height
