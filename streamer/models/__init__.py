"""Models without PyTorch: read ``.pt`` checkpoints safely and write YOLOv7 ONNX graphs.

`streamer.models.checkpoint` reads a PyTorch zip checkpoint with a restricted unpickler (NumPy only);
`streamer.models.yolov7_onnx` turns a YOLOv7 checkpoint into an ONNX detector (imports ``onnx``). Import
the submodules you need: this package imports neither at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["import_checkpoint", "load_checkpoint"]


def load_checkpoint(path: str | Path) -> Any:
    """See `streamer.models.checkpoint.load_checkpoint`."""
    from streamer.models.checkpoint import load_checkpoint as load

    return load(path)


def import_checkpoint(
    ckpt_path: str | Path, out_path: str | Path, *, fp16: bool = False, img: int = 640
) -> Path:
    """See `streamer.models.yolov7_onnx.import_checkpoint`."""
    from streamer.models.yolov7_onnx import import_checkpoint as convert

    return convert(ckpt_path, out_path, fp16=fp16, img=img)
