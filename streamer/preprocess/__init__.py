"""Frame → engine input: YOLOv7 letterbox, colour order, normalisation.

`letterbox` is the CPU reference (RGB frames); `nv12` its NumPy model for NV12 frames, which the CUDA
kernel in `cuda_kernel` (GPU path only, imported lazily) reproduces bit for bit.
"""

from streamer.preprocess.letterbox import LetterboxGeometry, letterbox, letterbox_geometry, to_input_tensor

__all__ = ["LetterboxGeometry", "letterbox", "letterbox_geometry", "to_input_tensor"]
