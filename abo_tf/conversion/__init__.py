"""Exports of a run's classifier for other runtimes (LiteRT, ONNX), with their parity and latency."""
