"""Decode an audio file (wav/flac/ogg via libsndfile) to mono float32 at a given rate or at the file's own.

Every failure becomes AudioFileError with one line naming the file, because `classify` and `--input` are where
users first meet the sensor and a traceback about libsndfile helps nobody.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .pcm import SAMPLE_RATE_HZ, to_model_rate


class AudioFileError(ValueError):
    """The file is missing, unreadable or not audio; str() is one line naming the file."""


@dataclass(frozen=True)
class AudioFile:
    path: Path
    waveform: np.ndarray  # mono float32 at `rate_hz`
    rate_hz: int
    source_rate_hz: int
    channels: int

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / self.rate_hz


def read_audio(path: Path | str, rate_hz: int | None = SAMPLE_RATE_HZ) -> AudioFile:
    """`rate_hz` None keeps the file's own rate: `classify` then measures levels on the full band, as the live sensor
    does at its capture rate, and the pipeline brings the model its band as it does live."""
    import soundfile  # libsndfile; imported here so the live daemon only loads it for --input

    path = Path(path)
    if not path.exists():
        raise AudioFileError(f"{path}: no such file")
    if path.is_dir():
        raise AudioFileError(f"{path}: is a directory, not an audio file")
    try:
        data, source_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc).split(":")[-1].strip() or type(exc).__name__
        raise AudioFileError(f"{path}: cannot decode as audio ({reason})") from None
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: contains no audio samples")
    rate = int(source_rate) if rate_hz is None else rate_hz
    waveform = to_model_rate(data, int(source_rate), rate)
    return AudioFile(path, waveform, rate, int(source_rate), data.shape[1])
