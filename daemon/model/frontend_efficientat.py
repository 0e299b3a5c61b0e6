"""EfficientAT's log-mel front end in numpy: mono 32 kHz audio -> the 128 x 1001 spectrogram its MobileNets take.

EfficientAT (fschmid56/EfficientAT, MIT) trains and evaluates its models on `AugmentMelSTFT` (models/preprocess.py)
in eval mode: pre-emphasis, a centred reflect-padded STFT, power spectrum, 128 Kaldi-style mel filters, log, and a
fixed affine "fast normalisation". A model only gives its published accuracy on exactly those features, so this is a
faithful numpy copy, checked against the torch original by `bench/efficientat_frontend_check.py` (max |difference|
8.1e-5, mean 4.7e-7 on 12 real clips). It lives beside `frontend.py` and reuses its HTK mel scale.

Two deliberate details:

* The reference pre-emphasis is a valid 1-D convolution, so it drops a sample and 10 s at 32 kHz would give 1000
  frames; the exported TFLite model takes 1001. Here the first sample is kept (as if preceded by silence), which is
  bit-for-bit the reference run on the window with one zero sample in front: 320 000 samples -> 1001 frames.
* Our clips and the sensor's default capture are 16 kHz. Resampled to 32 kHz they carry nothing above 8 kHz, so the
  mel bands between 8 and 15 kHz (the top 49 of 128) sit at the log floor, -1.4 after normalisation. The model was
  trained on full-band 32 kHz AudioSet, so 16 kHz input costs it some accuracy on sounds with energy up there
  (sirens' harmonics, birdsong); capture at 32 kHz or more (audio.sample_rate_hz) to give it the full band.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio.fft import real_fft
from .frontend import ManifestParams, hz_to_mel

EFFICIENTAT_RATE_HZ = 32000


@dataclass(frozen=True)
class EfficientATParams(ManifestParams):
    """EfficientAT eval-time front-end settings; travels in the bundle manifest like `FrontendParams`."""

    sample_rate_hz: int = EFFICIENTAT_RATE_HZ  # the daemon resamples every window to this rate first
    preemphasis: float = 0.97  # y[n] = x[n] - 0.97 x[n-1]
    fft_length: int = 1024
    stft_window_samples: int = 800  # symmetric Hann, zero-padded to fft_length, centred in the frame
    hop_samples: int = 320  # 10 ms at 32 kHz
    mel_bands: int = 128
    mel_min_hz: float = 0.0
    mel_max_hz: float = 15000.0  # EfficientAT's default: sr/2 - 1000 Hz
    log_offset: float = 1e-5
    norm_shift: float = 4.5  # (ln(mel + log_offset) + norm_shift) / norm_scale
    norm_scale: float = 5.0
    patch_s: float = 10.0  # one model input: the exported TFLite has a fixed 1001-frame time axis

    @property
    def patch_samples(self) -> int:
        """Waveform samples of one model input (320 000 = 10 s)."""
        return int(round(self.patch_s * self.sample_rate_hz))

    @property
    def patch_hop_samples(self) -> int:
        return self.patch_samples

    @property
    def patch_frames(self) -> int:
        """STFT frames of one model input: centred STFT gives 1 + samples // hop (1001)."""
        return 1 + self.patch_samples // self.hop_samples


EFFICIENTAT = EfficientATParams()


def kaldi_mel_banks(params: EfficientATParams) -> np.ndarray:
    """(fft_length//2+1, mel_bands) weights, as `torchaudio.compliance.kaldi.get_mel_banks` (no VTLN warp) makes
    them and EfficientAT pads them: triangles evenly spaced on the HTK mel scale between mel_min and mel_max, bins
    placed at k * sr / n_fft, and a zero row for the Nyquist bin, which Kaldi's banks do not cover."""
    nyquist_hz = params.sample_rate_hz / 2.0
    if not 0.0 <= params.mel_min_hz < params.mel_max_hz <= nyquist_hz:
        raise ValueError(f"mel range {params.mel_min_hz}-{params.mel_max_hz} Hz must lie within 0-{nyquist_hz} Hz")
    num_bins = params.fft_length // 2  # Kaldi's banks stop one bin short of Nyquist
    mel_low, mel_high = hz_to_mel(params.mel_min_hz), hz_to_mel(params.mel_max_hz)
    delta = (mel_high - mel_low) / (params.mel_bands + 1)
    left = mel_low + delta * np.arange(params.mel_bands)[:, None]  # (mel_bands, 1)
    center, right = left + delta, left + 2.0 * delta
    bins_mel = hz_to_mel(params.sample_rate_hz / params.fft_length * np.arange(num_bins))  # (num_bins,)
    up = (bins_mel - left) / (center - left)
    down = (right - bins_mel) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))  # (mel_bands, num_bins)
    return np.pad(banks, ((0, 0), (0, 1))).T  # (num_bins + 1, mel_bands)


def centred_window(params: EfficientATParams) -> np.ndarray:
    """Symmetric Hann of stft_window_samples zero-padded to fft_length, centred as torch.stft places it."""
    window = np.zeros(params.fft_length)
    left = (params.fft_length - params.stft_window_samples) // 2
    window[left : left + params.stft_window_samples] = np.hanning(params.stft_window_samples)  # symmetric
    return window


class EfficientATFrontend:
    """Model inputs for one parameter set; window and mel banks are built once, not per window.

    Per window the STFT is the cost (~1000 frames of 1024): only the window's 800 non-zero samples of each frame are
    multiplied (the zero padding around them shifts the frame in time, which leaves the power spectrum unchanged),
    only the bins the mel banks use are squared, and the FFT is scipy's float32 one where installed
    (`daemon/audio/fft.py`): ~3x less time than numpy's float64, log-mel within 1e-5 of it."""

    def __init__(self, params: EfficientATParams = EFFICIENTAT, use_scipy: bool | None = None) -> None:
        if params.stft_window_samples > params.fft_length:
            raise ValueError(f"STFT window {params.stft_window_samples} exceeds FFT length {params.fft_length}")
        self.params = params
        self._fft, self._dtype = real_fft(use_scipy)
        self._left = (params.fft_length - params.stft_window_samples) // 2  # where the window sits in a frame
        window = centred_window(params)
        self._window = window[self._left : self._left + params.stft_window_samples].astype(self._dtype)
        banks = kaldi_mel_banks(params)
        self._bins = int(np.flatnonzero(banks.any(axis=1)).max()) + 1  # bins above mel_max_hz weigh nothing
        self._mel = np.ascontiguousarray(banks[: self._bins], dtype=np.float32)

    def log_mel(self, waveform: np.ndarray) -> np.ndarray:
        """Mono float32 at 32 kHz -> (mel_bands, 1 + samples // hop) normalised log-mel, the model's layout."""
        p = self.params
        x = np.asarray(waveform, dtype=self._dtype)
        pad = p.fft_length // 2
        if len(x) <= pad:  # reflect padding needs more samples than it pads
            x = np.pad(x, (0, pad + 1 - len(x)))
        emphasized = np.empty_like(x)
        emphasized[0] = x[0]
        emphasized[1:] = x[1:] - self._dtype(p.preemphasis) * x[:-1]
        padded = np.pad(emphasized, pad, mode="reflect")  # torch.stft(center=True, pad_mode="reflect")
        num_frames = 1 + len(x) // p.hop_samples
        frames = np.lib.stride_tricks.sliding_window_view(padded[self._left :], p.stft_window_samples)
        frames = frames[:: p.hop_samples][:num_frames]
        spectrum = self._fft.rfft(frames * self._window, n=p.fft_length)[:, : self._bins]
        power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32, copy=False)
        mel = power @ self._mel  # (frames, mel_bands)
        normalised = (np.log(mel + np.float32(p.log_offset)) + np.float32(p.norm_shift)) / np.float32(p.norm_scale)
        return np.ascontiguousarray(normalised.T)  # (mel_bands, frames)

    def segments(self, waveform: np.ndarray) -> np.ndarray:
        """Waveform -> (n, patch_samples) pieces of one model input each; a short tail is zero-padded when it is the
        only piece (a short clip) and dropped otherwise, like the patch grid of the other front end."""
        n = self.params.patch_samples
        if len(waveform) < n:
            waveform = np.pad(waveform, (0, n - len(waveform)))
        count = len(waveform) // n
        return np.asarray(waveform[: count * n], dtype=np.float32).reshape(count, n)

    def log_mel_patches(self, waveform: np.ndarray) -> np.ndarray:
        """Mono float32 at 32 kHz -> (n, mel_bands, patch_frames) model inputs, one per 10 s."""
        return np.stack([self.log_mel(s) for s in self.segments(waveform)])
