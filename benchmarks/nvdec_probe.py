"""What PyNvVideoCodec hands out on this machine: a first look before the NVDEC tests (GPU host).

    python benchmarks/nvdec_probe.py

Encodes a short 1366×768 H.264 clip with PyAV, decodes it with `NvdecSource` and prints, for the first
frames, what the decoder's frame object offers (attributes, CUDA array interfaces of its planes, the
timestamp) and what the source made of it (pointers, pitch, pts), then the frame count and pts of both
decoders. When the source fails, the raw PyNvVideoCodec objects are printed instead, so the API
mismatch is visible in one run.
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.media import decode_timestamps, write_clip
from tests.support.nv12clips import content_frames


def describe(frame: object) -> str:
    names = [n for n in dir(frame) if not n.startswith("__")]
    parts = [f"type {type(frame).__name__}", f"attrs {names}"]
    for name in ("timestamp", "format", "shape", "strides", "dtype"):
        if hasattr(frame, name):
            try:
                parts.append(f"{name}={getattr(frame, name)!r}")
            except Exception as exc:  # a property may need state this probe lacks
                parts.append(f"{name}: {exc!r}")
    if hasattr(frame, "cuda"):
        try:
            views = frame.cuda()  # type: ignore[attr-defined]
            parts.append(f"cuda() → {[getattr(v, '__cuda_array_interface__', v) for v in views]}")
        except Exception as exc:
            parts.append(f"cuda(): {exc!r}")
    if hasattr(frame, "__cuda_array_interface__"):
        parts.append(f"__cuda_array_interface__ {frame.__cuda_array_interface__}")  # type: ignore[attr-defined]
    return "\n    ".join(parts)


def raw(clip: Path) -> None:
    import av
    import numpy as np
    import PyNvVideoCodec as nvc

    from streamer.sources.nvdec import annexb_packets

    print("PyNvVideoCodec", getattr(nvc, "__version__", "?"), [n for n in dir(nvc) if not n.startswith("_")])
    decoder = nvc.CreateDecoder(gpuid=0, codec=nvc.cudaVideoCodec.H264, usedevicememory=True)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        shown = 0
        for packet in annexb_packets(container.demux(stream), stream):
            data = nvc.PacketData()
            buffer = np.frombuffer(memoryview(packet), np.uint8) if packet.size else None
            if buffer is not None:
                data.bsl_data, data.bsl = int(buffer.ctypes.data), int(buffer.size)
            else:
                data.bsl = 0
            if packet.pts is not None:
                data.pts = int(packet.pts)
            for frame in decoder.Decode(data):
                if shown < 2:
                    print("raw frame:", describe(frame))
                shown += 1
        print("raw frames decoded:", shown)


def main() -> None:
    from streamer.sources.nvdec import NvdecSource, nvdec_usable

    print("nvdec_usable:", nvdec_usable() or "yes")
    with tempfile.TemporaryDirectory() as tmp:
        frames, _ = content_frames((1366, 768), count=3)
        clip = write_clip(Path(tmp) / "probe.mp4", [f for f in frames for _ in range(4)], codec="h264")
        print("PyAV pts:", [float(t) for t in decode_timestamps(clip)])
        source = NvdecSource("probe", str(clip))
        try:
            print("info:", source.open())
            got = []
            for frame in source.frames():
                got.append(frame)
                if len(got) <= 2:
                    print(f"frame {frame.index}: pts {frame.pts} {frame.width}x{frame.height} "
                          f"y {frame.y_ptr:#x} uv {frame.uv_ptr:#x} pitch {frame.pitch}")  # fmt: skip
            print("NvdecSource pts:", [f.pts for f in got])
        except Exception:
            traceback.print_exc()
            print("NvdecSource failed; the raw API:")
            raw(clip)
        finally:
            source.close()


if __name__ == "__main__":
    main()
