"""Seeded corruptions of real clips, for the tests that feed damaged input to the decoders and the daemon.

Each corruption leaves the container's beginning up to the first keyframe intact (so the file still opens
and some frames decode, as a camera recording damaged on disk or in transit would) and damages what
follows, one of three ways chosen by the seed: flip 1 % of the bytes, zero a run of them, or copy a
chunk of the file over another place. What PyAV 18 did with such files before the sources contained it
(`streamer.sources.guard`): MPEG-TS raised `IndexError` out of ``container.demux``, MP4 and Matroska
`UnicodeDecodeError` from their metadata, MP4 an `AttributeError` from the source itself.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

KINDS = ("flip", "zero", "splice")


def first_keyframe_end(path: str | Path) -> int:
    """Byte offset just past the first keyframe of the first video stream of `path` (0 if unknown)."""
    with av.open(str(path)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.is_keyframe and packet.pos is not None and packet.pos >= 0:
                return int(packet.pos) + packet.size
    return 0


def corrupt_bytes(data: bytes, start: int, seed: int) -> tuple[bytes, str]:
    """`data` damaged after byte `start`, the way `seed` picks (see the module docstring); and the kind."""
    rng = np.random.default_rng(seed)
    kind = KINDS[seed % len(KINDS)]
    out = np.frombuffer(data, np.uint8).copy()
    span = len(out) - start
    if span <= 16:
        raise ValueError(f"nothing to corrupt after byte {start} of {len(out)}")
    if kind == "flip":
        where = rng.integers(start, len(out), max(1, span // 100))
        out[where] ^= rng.integers(1, 256, where.size, dtype=np.uint8)
    elif kind == "zero":
        length = int(rng.integers(max(1, span // 50), max(2, span // 12)))
        at = int(rng.integers(start, len(out) - length))
        out[at : at + length] = 0
    else:
        length = int(rng.integers(max(1, span // 50), max(2, span // 8)))
        src, dst = (int(x) for x in rng.integers(start, len(out) - length, 2))
        out[dst : dst + length] = out[src : src + length].copy()
    return out.tobytes(), kind


def corrupted_clip(src: str | Path, dst: str | Path, seed: int) -> Path:
    """Write `src` damaged past its first keyframe (`corrupt_bytes` with `seed`) to `dst`; returns `dst`."""
    data = Path(src).read_bytes()
    damaged, _ = corrupt_bytes(data, first_keyframe_end(src), seed)
    dst = Path(dst)
    dst.write_bytes(damaged)
    return dst
