"""Per-stream tracking after NMS: ByteTrack over a batched Kalman filter (see `bytetrack`)."""

from streamer.tracking.bytetrack import ByteTracker, StreamClock, TrackParams

__all__ = ["ByteTracker", "StreamClock", "TrackParams"]
