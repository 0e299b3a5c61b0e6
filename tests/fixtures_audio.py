"""A real PulseAudio virtual microphone for tests (owned by the capture work)."""
