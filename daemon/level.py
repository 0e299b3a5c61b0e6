"""Sound level of a window: A-weighted equivalent level (LAeq), in dBFS or, with a calibration offset, dB(A).

Operators compare sensors by level as much as by class, so this is computed on every window. It uses one FFT of
the whole window (Parseval), which costs a few ms for 10 s at 16 kHz and needs no filter state across windows.
"""

from __future__ import annotations

import numpy as np


def a_weighting_gain(frequencies_hz: np.ndarray) -> np.ndarray:
    """IEC 61672 A-weighting as a linear power gain, normalised to 1 at 1 kHz."""
    f2 = np.asarray(frequencies_hz, dtype=np.float64) ** 2
    ra = (12194.0**2 * f2**2) / ((f2 + 20.6**2) * np.sqrt((f2 + 107.7**2) * (f2 + 737.9**2)) * (f2 + 12194.0**2))
    return (ra / 0.7943282347242815) ** 2  # ra(1 kHz) = 10**(-2.0/20) before the +2.00 dB correction


class LevelMeter:
    """LAeq of mono float windows: dBFS (full-scale sine = -3 dBFS), plus the calibration offset when one is set.

    The A-weighting curve is kept for the last window length seen: every live window has the same length.
    """

    def __init__(self, rate_hz: int, calibration_db: float | None = None) -> None:
        self.rate_hz = rate_hz
        self.calibration_db = calibration_db
        self._gain = np.zeros(0)

    def __call__(self, waveform: np.ndarray) -> float:
        n = len(waveform)
        if n == 0:
            return float("-inf")
        if len(self._gain) != n // 2 + 1:
            self._gain = a_weighting_gain(np.fft.rfftfreq(n, 1.0 / self.rate_hz))
        power = np.abs(np.fft.rfft(waveform)) ** 2
        power[1 : (n + 1) // 2] *= 2.0  # one-sided spectrum: fold the negative frequencies back in
        mean_square = float(np.dot(power, self._gain)) / (n * n)
        return 10.0 * np.log10(max(mean_square, 1e-20)) + (self.calibration_db or 0.0)
