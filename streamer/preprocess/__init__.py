"""Frame → engine input: YOLOv7 letterbox, colour order, normalisation (CPU reference here; CUDA later)."""

from streamer.preprocess.letterbox import LetterboxGeometry, letterbox, letterbox_geometry, to_input_tensor

__all__ = ["LetterboxGeometry", "letterbox", "letterbox_geometry", "to_input_tensor"]
