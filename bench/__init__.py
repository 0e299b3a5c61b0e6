"""Benchmarks of the sensor's per-window cost against the seed-style TensorFlow pipeline (`python -m bench`)."""
