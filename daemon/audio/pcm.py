"""Samples as the sensor handles them before any model sees them: mono float32 in [-1, 1], at 16 kHz.

Kept apart from the front end so that capture and file decoding (the audio room) need nothing from the model
room; the front end builds on these.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE_HZ = 16000  # the band every model was trained on (all of ../shared is 16 kHz)


def to_mono_float32(audio: np.ndarray) -> np.ndarray:
    """Integer or float samples, any channel count (frames x channels) -> mono float32 in [-1, 1]."""
    audio = np.asarray(audio)
    if np.issubdtype(audio.dtype, np.integer):
        info = np.iinfo(audio.dtype)
        if info.min == 0:  # unsigned PCM (8-bit WAV) is centred on the midpoint
            mid = (int(info.max) + 1) // 2
            audio = (audio.astype(np.float32) - mid) / mid
        else:
            audio = audio.astype(np.float32) / float(-int(info.min))
    elif np.issubdtype(audio.dtype, np.floating):
        audio = audio.astype(np.float32, copy=False)
    else:
        raise TypeError(f"unsupported sample type {audio.dtype}")
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    elif audio.ndim != 1:
        raise ValueError(f"audio must be 1-D or frames x channels, got shape {audio.shape}")
    return audio


def resample(audio: np.ndarray, rate_hz: int, target_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Resample mono float32 with soxr (high quality, ~90x faster than resampy and no numba)."""
    if rate_hz == target_hz:
        return audio
    import soxr  # imported here so that 16 kHz capture never pays for it

    out: np.ndarray = soxr.resample(audio, rate_hz, target_hz, quality="HQ").astype(np.float32, copy=False)
    return out


def to_model_rate(audio: np.ndarray, rate_hz: int, target_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Any rate/dtype/channel count -> mono float32 at the model rate."""
    return resample(to_mono_float32(audio), rate_hz, target_hz)
