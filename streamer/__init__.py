"""yolostream: decode video streams, detect objects with YOLOv7, publish detections over ZeroMQ."""

__version__ = "0.1.0"
