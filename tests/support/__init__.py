"""Helpers for the test suite: real encoded video (`media`), ONNX models written here (`models`), and the
shared data that only CI has (`paths`, whose helpers skip with a clear reason when it is absent)."""
