"""Sound levels of a window in the figures noise teams use: LAeq, LAFmax, LAFmin and LA10/LA50/LA90.

Computed on the capture-rate audio (48 kHz on most USB mics), so A-weighting covers the whole audible band rather than
stopping at the model's 8 kHz Nyquist.

Conventions, applied everywhere a level is reported:

* dBFS per AES17: a full-scale sine reads 0 dBFS, i.e. level = 10 log10(mean square) + 3.01 dB.
* With `audio.calibration_db` set (see `custom-sensord calibrate`) the offset is added and levels are dB(A) SPL;
  without it they are A-weighted dBFS.

A-weighting is applied in the frequency domain (one rfft/irfft of the window, through `audio.fft.real_fft`: scipy's
float32 FFT when the optional `fastfft` extra is installed, as the installer does, else numpy's float64 one) with the
IEC 61672-1 analytic curve, rather than as a bilinear-transformed IIR filter. Why: scipy is optional on the sensor (so
no IIR filter can be counted on), the whole window is at hand at once, a power meter does not care about phase, and
the FFT weighting is exact up to Nyquist where a bilinear filter warps the top octave. The window is mirror-padded so
that its edges make no click (see `LevelMeter.weighted`).

Fast time weighting is the IEC exponential average of the squared A-weighted signal with tau = 125 ms, evaluated per
sample in closed form (chunked scaled cumulative sums: exact, vectorised, no Python loop). Each window is measured on
its own: the detector starts settled at the mean square of the window's first 125 ms, so a window's start does not
read as a fade-in. LAeq is the energy mean of the window; Ln are percentiles of the fast level sampled every ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..audio.fft import real_fft

AES17_OFFSET_DB = 10.0 * math.log10(2.0)  # mean square of a full-scale sine is 1/2: +3.01 dB makes it 0 dBFS
FAST_TAU_S = 0.125  # IEC 61672-1 "F" time weighting
LN_STEP_S = 0.001  # fast level sampled every ms for LA10/50/90 of a window
SUMMARY_STEP_S = 0.1  # ... every 100 ms for the hourly percentiles (36 000 values an hour)
MIRROR_S = 0.1  # mirrored padding at each end of a window: the A-weighting response to an edge is < -120 dB by then
_MAX_EXPONENT = 60.0  # chunk the scaled cumsum so that exp(+-exponent) stays far from float64 limits
_FLOOR = 1e-20  # mean square of digital silence: -197 dB instead of -inf

# IEC 61672-1:2013 Annex E pole frequencies (Hz) and the A1000 normalisation (dB)
_F1, _F2, _F3, _F4 = 20.598997, 107.65265, 737.86223, 12194.217
_A1000_DB = -2.000


def a_weighting_db(frequencies_hz: np.ndarray | float) -> np.ndarray:
    """IEC 61672-1 A-weighting in dB (0 at 1 kHz); -inf at 0 Hz."""
    f2 = np.asarray(frequencies_hz, dtype=np.float64) ** 2
    with np.errstate(divide="ignore"):
        ra = (_F4**2 * f2**2) / ((f2 + _F1**2) * np.sqrt((f2 + _F2**2) * (f2 + _F3**2)) * (f2 + _F4**2))
        return 20.0 * np.log10(ra) - _A1000_DB


def _fft_size(n: int) -> int:
    """The smallest 5-smooth number >= n."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def power_db(mean_square: float | np.ndarray) -> np.ndarray:
    """Mean square of a full-scale-1 signal -> dBFS (AES17), without calibration."""
    return 10.0 * np.log10(np.maximum(mean_square, _FLOOR)) + AES17_OFFSET_DB


@dataclass(frozen=True)
class WindowLevels:
    """One window's levels in dB (calibration applied), plus the fast levels the hourly summary pools."""

    laeq: float
    lafmax: float
    lafmin: float
    la10: float
    la50: float
    la90: float
    unit: str
    fast_db: np.ndarray  # fast level every SUMMARY_STEP_S, float32, for the hour's percentiles

    def to_event(self) -> dict[str, float | str | None]:
        figures = {
            "laeq": self.laeq,
            "lafmax": self.lafmax,
            "lafmin": self.lafmin,
            "la10": self.la10,
            "la50": self.la50,
            "la90": self.la90,
        }
        return {**{k: round(float(v), 1) if math.isfinite(v) else None for k, v in figures.items()}, "unit": self.unit}


class LevelMeter:
    """Measures windows of mono float audio at any rate; caches the weighting curve per (length, rate)."""

    def __init__(self, calibration_db: float | None = None, use_scipy: bool | None = None) -> None:
        """`use_scipy` None: scipy's float32 FFT when scipy is installed, else numpy's float64 one."""
        self.calibration_db = calibration_db
        self._fft, self._dtype = real_fft(use_scipy)  # scipy's keeps levels under 10 % of a window
        self.unit = "dBFS" if calibration_db is None else "dB(A)"
        self._weights: dict[tuple[int, float], np.ndarray] = {}

    @property
    def offset_db(self) -> float:
        return AES17_OFFSET_DB + (self.calibration_db or 0.0)

    def weighted(self, samples: np.ndarray, rate_hz: float) -> np.ndarray:
        """The A-weighted waveform (float64, computed in float32 with scipy), same length.

        The window is mirrored for MIRROR_S at both ends before the FFT: a circular (or zero-padded) FFT filter sees
        a jump where the window's end meets its start, and the A-weighted click of that jump is loud next to
        low-frequency sound (+0.9 dB on a 31.5 Hz tone). A mirror is continuous, and the seam of the padded block
        lies MIRROR_S away from the kept samples, by when the filter's response has died away.
        """
        x = np.asarray(samples)
        n = len(x)
        pad = min(n - 1, round(MIRROR_S * rate_hz))
        size = _fft_size(n + 2 * pad)  # a 2^a 3^b 5^c length: pocketfft's fastest
        right = min(n - 1, size - n - pad)
        padded = np.zeros(size, dtype=self._dtype)  # one buffer, filled in place: no concatenate/pad copies
        padded[:pad] = x[pad:0:-1]
        padded[pad : pad + n] = x
        padded[pad + n : pad + n + right] = x[n - 2 : n - 2 - right : -1]  # zeros after: only for very short windows
        key = (size, float(rate_hz))
        amplitude = self._weights.get(key)
        if amplitude is None:
            gain_db = a_weighting_db(np.fft.rfftfreq(size, 1.0 / rate_hz))
            amplitude = (10.0 ** (gain_db / 20.0)).astype(self._dtype)  # 0 at DC
            self._weights = {key: amplitude}  # live windows all have one length: keep just the latest
        spectrum = self._fft.rfft(padded)
        spectrum *= amplitude
        weighted: np.ndarray = self._fft.irfft(spectrum, size)[pad : pad + n].astype(np.float64)
        return weighted

    def __call__(self, samples: np.ndarray, rate_hz: float) -> WindowLevels:
        if len(samples) == 0:
            raise ValueError("cannot measure an empty window")
        squared = self.weighted(samples, rate_hz)
        np.square(squared, out=squared)
        step = max(1, round(LN_STEP_S * rate_hz))
        fast = fast_mean_square(squared, rate_hz, step)  # every ms
        fast_db = power_db(fast)
        offset = self.calibration_db or 0.0
        l90, l50, l10 = np.percentile(fast_db, [10.0, 50.0, 90.0])
        every = max(1, round(SUMMARY_STEP_S / LN_STEP_S))
        return WindowLevels(
            laeq=float(power_db(float(np.mean(squared)))) + offset,
            lafmax=float(np.max(fast_db)) + offset,
            lafmin=float(np.min(fast_db)) + offset,
            la10=float(l10) + offset,
            la50=float(l50) + offset,
            la90=float(l90) + offset,
            unit=self.unit,
            fast_db=(fast_db[every - 1 :: every] + offset).astype(np.float32),
        )


def fast_mean_square(squared: np.ndarray, rate_hz: float, step: int = 1, tau_s: float = FAST_TAU_S) -> np.ndarray:
    """The exponential (F) detector y[n] = a y[n-1] + (1-a) x[n], a = exp(-1/(tau fs)), started at the mean of the
    first tau, read at the end of every `step` samples (a trailing part block is left out).

    Exact, and vectorised: a block of m samples moves the detector to a^m y + sum_j (1-a) a^(m-1-j) x[j] (one
    matrix-vector product for all blocks), and that block recursion is summed in closed form per chunk,
    y[b] = A^b (A y0 + cumsum(A^-k u[k])) with A = a^m, the chunks short enough that A^-k stays finite.
    """
    decay = 1.0 / (tau_s * rate_hz)  # per sample
    a = math.exp(-decay)
    blocks = len(squared) // step
    weights = (1.0 - a) * np.exp(-decay * np.arange(step - 1, -1, -1, dtype=np.float64))
    # einsum, not `@`: a BLAS gemv this small spends more on waking its threads than on the sums (20 ms vs 1 ms)
    inputs = np.einsum("ij,j->i", squared[: blocks * step].reshape(blocks, step), weights)
    state = float(np.mean(squared[: max(1, round(tau_s * rate_hz))]))
    block_decay = decay * step
    chunk = max(1, int(_MAX_EXPONENT / block_decay))
    ramp = np.arange(min(chunk, blocks), dtype=np.float64) * block_decay
    grow, shrink = np.exp(ramp), np.exp(-ramp)
    big_a = math.exp(-block_decay)
    out = np.empty(blocks, dtype=np.float64)
    for start in range(0, blocks, chunk):
        u = inputs[start : start + chunk]
        m = len(u)
        y = shrink[:m] * (np.cumsum(u * grow[:m]) + big_a * state)
        out[start : start + m] = y
        state = float(y[-1])
    return out
