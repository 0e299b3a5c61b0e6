"""The one audio front end of the sensor: any audio -> mono 16 kHz -> log-mel patches.

This is the numpy version of the reference VGGish (`mel_features.py`) and YAMNet (`features.py`) front ends. The
daemon runs it on every window and the converter imports it for calibration data, so there is exactly one copy.
It must stay free of TensorFlow: it runs on the Pi.

Both reference front ends compute the same spectrogram (periodic Hann, 25 ms / 10 ms, 512-point |FFT|, 64 HTK-mel
bands 125-7500 Hz with the DC bin zeroed); they differ only in the log offset and the patch hop, which is why one
frozen parameter set with two presets covers both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from custom.wire.settings import build

from ..audio.pcm import SAMPLE_RATE_HZ

# HTK mel scale constants, as in mel_features.py and tf.signal.linear_to_mel_weight_matrix.
_MEL_BREAK_FREQUENCY_HZ = 700.0
_MEL_HIGH_FREQUENCY_Q = 1127.0


_P = TypeVar("_P", bound="ManifestParams")


class ManifestParams:
    """Front-end parameters travel in bundle manifests as plain dicts; both front ends read them through the one
    validation engine, so a manifest key neither front end knows is an error naming it, not silently ignored."""

    def to_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses
        return fields

    @classmethod
    def from_dict(cls: type[_P], data: dict[str, Any], key_path: str = "frontend") -> _P:
        return build(cls, data, key_path)  # type: ignore[type-var]  # subclasses are dataclasses


@dataclass(frozen=True)
class FrontendParams(ManifestParams):
    """Front-end settings; travels in every bundle manifest so a model always gets the features it was trained on."""

    sample_rate_hz: int = SAMPLE_RATE_HZ
    stft_window_s: float = 0.025
    stft_hop_s: float = 0.010
    fft_length: int = 512
    mel_bands: int = 64
    mel_min_hz: float = 125.0
    mel_max_hz: float = 7500.0
    log_offset: float = 0.01
    patch_frames: int = 96
    patch_hop_frames: int = 96

    @property
    def window_samples(self) -> int:
        return int(round(self.sample_rate_hz * self.stft_window_s))

    @property
    def hop_samples(self) -> int:
        return int(round(self.sample_rate_hz * self.stft_hop_s))

    @property
    def patch_samples(self) -> int:
        """Waveform samples that make exactly one patch (0.975 s for the defaults)."""
        return (self.patch_frames - 1) * self.hop_samples + self.window_samples

    @property
    def patch_hop_samples(self) -> int:
        return self.patch_hop_frames * self.hop_samples


VGGISH = FrontendParams(log_offset=0.01, patch_hop_frames=96)
YAMNET = FrontendParams(log_offset=0.001, patch_hop_frames=48)


def hz_to_mel(frequencies_hz: np.ndarray | float) -> np.ndarray:
    """HTK mel: 1127 ln(1 + f/700)."""
    return _MEL_HIGH_FREQUENCY_Q * np.log(1.0 + np.asarray(frequencies_hz, dtype=np.float64) / _MEL_BREAK_FREQUENCY_HZ)


def periodic_hann(window_samples: int) -> np.ndarray:
    """Periodic ("DFT-even") Hann window, as the references use, not numpy's symmetric np.hanning."""
    window: np.ndarray = 0.5 - 0.5 * np.cos(2.0 * np.pi / window_samples * np.arange(window_samples))
    return window


def mel_matrix(params: FrontendParams) -> np.ndarray:
    """Linear-frequency bins -> mel bands weights, shape (fft_length//2+1, mel_bands).

    Triangles are built in the mel domain (as both references do) and the DC bin gets no weight.
    """
    nyquist_hz = params.sample_rate_hz / 2.0
    if not 0.0 <= params.mel_min_hz < params.mel_max_hz <= nyquist_hz:
        raise ValueError(f"mel range {params.mel_min_hz}-{params.mel_max_hz} Hz must lie within 0-{nyquist_hz} Hz")
    num_bins = params.fft_length // 2 + 1
    bins_mel = hz_to_mel(np.linspace(0.0, nyquist_hz, num_bins))  # (num_bins,)
    edges_mel = np.linspace(hz_to_mel(params.mel_min_hz), hz_to_mel(params.mel_max_hz), params.mel_bands + 2)
    lower, center, upper = edges_mel[:-2], edges_mel[1:-1], edges_mel[2:]  # (mel_bands,) each
    lower_slope = (bins_mel[:, None] - lower) / (center - lower)
    upper_slope = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(lower_slope, upper_slope))  # (num_bins, mel_bands)
    weights[0, :] = 0.0
    table: np.ndarray = weights
    return table


class Frontend:
    """Log-mel patches for one parameter set; window and mel matrix are built once, not per window."""

    def __init__(self, params: FrontendParams) -> None:
        if params.window_samples > params.fft_length:
            raise ValueError(f"STFT window {params.window_samples} samples exceeds FFT length {params.fft_length}")
        self.params = params
        # float64 on purpose: numpy's float32 FFT path is ~6x slower than its float64 one (numpy 2.4, x86)
        self._window = periodic_hann(params.window_samples)
        self._mel = mel_matrix(params).astype(np.float32)

    def log_mel(self, waveform: np.ndarray) -> np.ndarray:
        """Mono float32 at the model rate -> (frames, mel_bands) log-mel; a short input gives zero frames."""
        p = self.params
        n = len(waveform)
        num_frames = 0 if n < p.window_samples else 1 + (n - p.window_samples) // p.hop_samples
        frames = np.lib.stride_tricks.sliding_window_view(waveform, p.window_samples)[:: p.hop_samples][:num_frames]
        spectrum = np.abs(np.fft.rfft(frames * self._window, n=p.fft_length))  # (frames, fft_length//2+1)
        log_mel: np.ndarray = np.log(spectrum.astype(np.float32) @ self._mel + np.float32(p.log_offset))
        return log_mel  # (frames, mel_bands)

    def patches(self, log_mel: np.ndarray) -> np.ndarray:
        """(frames, bands) -> (patches, patch_frames, bands); frames past the last whole patch are dropped."""
        p = self.params
        if len(log_mel) < p.patch_frames:
            return np.zeros((0, p.patch_frames, log_mel.shape[1]), dtype=np.float32)
        view = np.lib.stride_tricks.sliding_window_view(log_mel, p.patch_frames, axis=0)[:: p.patch_hop_frames]
        return np.ascontiguousarray(view.transpose(0, 2, 1))

    def log_mel_patches(self, waveform: np.ndarray) -> np.ndarray:
        return self.patches(self.log_mel(waveform))

    def waveform_patches(self, waveform: np.ndarray) -> np.ndarray:
        """Waveform cut into the 0.975 s pieces a waveform-input model (TF-Hub YAMNet) turns into one patch each.

        Same hop as log_mel_patches, so both model kinds see the same patch grid.
        """
        p = self.params
        if len(waveform) < p.patch_samples:
            return np.zeros((0, p.patch_samples), dtype=np.float32)
        view = np.lib.stride_tricks.sliding_window_view(waveform, p.patch_samples)[:: p.patch_hop_samples]
        return np.ascontiguousarray(view, dtype=np.float32)
