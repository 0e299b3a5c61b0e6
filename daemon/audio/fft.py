"""The real FFT the daemon's numpy code uses: scipy's in float32 when the optional `fastfft` extra is installed
(the installer adds it), else numpy's in float64.

Why: scipy's float32 FFT is 2-3x numpy's on these sizes, and numpy's float32 path is no faster than its float64 one.
Both give the same figures to well under what any consumer resolves (levels to 0.01 dB, log-mel to 1e-5).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

try:
    import scipy.fft as _scipy_fft
except ImportError:
    _scipy_fft = None


def real_fft(use_scipy: bool | None = None) -> tuple[ModuleType, type[np.floating]]:
    """(module with rfft/irfft, the dtype to feed it). `use_scipy` None: scipy when installed."""
    if (use_scipy is None or use_scipy) and _scipy_fft is not None:
        return _scipy_fft, np.float32
    return np.fft, np.float64
