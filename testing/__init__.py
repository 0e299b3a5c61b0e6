"""Real-part test fixtures (mosquitto, PulseAudio virtual mic, the daemon as a subprocess, small VGGish checkpoints).

A package of its own, installed as ``custom.testing``, so that the test suite and ``bench/`` share one copy without
importing ``tests`` through ``sys.path`` edits.
"""
