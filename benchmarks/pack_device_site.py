"""Pack the wheels the GPU host lacks into one xz tarball small enough to travel with a device call.

    ../shared/device/wheels av pydantic pydantic-core annotated-types typing-inspection \
        typing-extensions prometheus-client pytest    # (--no-deps: name the dependencies)
    python benchmarks/pack_device_site.py .whl .whl-gpu/site.tar.xz

PyAV (35 MB) + PyNvVideoCodec (27 MB) + cuda-python (8 MB) as wheels exceed the 64 MiB a call may carry.
Unpacked side by side (a wheel is a zip of its installed files), without what PyNvVideoCodec ships that
nothing imports — FFmpeg's source tarball, samples, benchmarks, the CUDA 12 build of its module and two
extra copies of each FFmpeg library under other names — and compressed with xz, everything is ~34 MB.
On the host, `benchmarks/gpu_session.sh` unpacks it into /tmp/site.
"""

from __future__ import annotations

import fnmatch
import lzma
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

DROP = (
    "*.data/*",  # pynvvideocodec: FFmpeg sources (12 MB), headers
    "samples/*",
    "benchmarks/*",
    "PyNvVideoCodec/PyNvVideoCodec_121.*",  # the CUDA 12 build; the host's driver is CUDA 13
    "PyNvVideoCodec/libavformat.so",  # the module loads libavformat.so.63 / libavutil.so.61
    "PyNvVideoCodec/libavformat.so.63.*",
    "PyNvVideoCodec/libavutil.so",
    "PyNvVideoCodec/libavutil.so.61.*",
)


def pack(wheels: Path, out: Path) -> None:
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise SystemExit(f"no wheels in {wheels}")
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        for wheel in files:
            with zipfile.ZipFile(wheel) as zf:
                for info in zf.infolist():
                    if any(fnmatch.fnmatch(info.filename, pattern) for pattern in DROP):
                        continue
                    path = Path(zf.extract(info, site))
                    mode = info.external_attr >> 16
                    if mode:
                        path.chmod(mode & 0o777)
        out.parent.mkdir(parents=True, exist_ok=True)
        with lzma.open(out, "wb", preset=9) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
            for path in sorted(site.iterdir()):
                tar.add(path, arcname=path.name)
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB from {len(files)} wheels")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    pack(Path(sys.argv[1]), Path(sys.argv[2]))
