"""Window levels: A-weighting against IEC 61672-1, AES17 dBFS, fast-weighted LAFmax/LAFmin/Ln against closed forms,
and a real clip against an independent computation (time-domain IIR filters from scipy, not the production FFT path).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soxr

from custom.daemon.audio.audiofile import read_audio
from custom.daemon.noise.levels import FAST_TAU_S, LevelMeter, a_weighting_db
from testing.shared import shared_dir

# IEC 61672-1:2013 Table 3 at the octave-band centres: nominal A-weighting (dB) and the Class 2 acceptance limits
# (+upper, -lower; None = -infinity), transcribed; where the 2002 edition's tolerances differ, the tighter value is
# used. Nominal frequencies stand for the exact base-10 values 1000 * 10^(n/10).
IEC_A_OCTAVES = [
    # (nominal Hz, exact Hz, A dB, class 2 upper, class 2 lower)
    (31.5, 1000 * 10 ** (-15 / 10), -39.4, 3.0, 3.0),
    (63, 1000 * 10 ** (-12 / 10), -26.2, 2.0, 2.0),
    (125, 1000 * 10 ** (-9 / 10), -16.1, 1.5, 1.5),
    (250, 1000 * 10 ** (-6 / 10), -8.6, 1.4, 1.4),
    (500, 1000 * 10 ** (-3 / 10), -3.2, 1.4, 1.4),
    (1000, 1000.0, 0.0, 1.0, 1.0),
    (2000, 1000 * 10 ** (3 / 10), 1.2, 2.0, 2.0),
    (4000, 1000 * 10 ** (6 / 10), 1.0, 3.0, 3.0),
    (8000, 1000 * 10 ** (9 / 10), -1.1, 5.0, None),
    (16000, 1000 * 10 ** (12 / 10), -6.6, 5.0, None),
]
TONE_DBFS = -20.0  # AES17: a sine of amplitude 10^(-20/20) reads -20 dBFS


def tone(freq_hz: float, seconds: float, rate_hz: float, dbfs: float = TONE_DBFS) -> np.ndarray:
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    return (10 ** (dbfs / 20) * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def power(dbfs: float) -> float:
    """Mean square of an AES17 sine at `dbfs`."""
    return 10 ** (dbfs / 10) / 2


def db(mean_square: float) -> float:
    return 10 * math.log10(mean_square * 2)


@pytest.mark.parametrize("rate_hz", [16000, 48000])
def test_a_weighting_meets_iec_61672_class_2_at_every_octave_below_nyquist(rate_hz: int) -> None:
    meter = LevelMeter()
    tested = 0
    for nominal, exact, table_db, upper, lower in IEC_A_OCTAVES:
        if exact >= rate_hz / 2:
            continue
        measured = meter(tone(exact, 10.0, rate_hz), rate_hz).laeq - TONE_DBFS
        deviation = measured - table_db
        assert deviation <= upper, f"{nominal} Hz at {rate_hz} Hz: {measured:.2f} dB vs {table_db} (+{upper})"
        assert lower is None or deviation >= -lower, f"{nominal} Hz at {rate_hz}: {measured:.2f} vs {table_db}"
        # the curve is the standard's own formula, so it should match the rounded table, not just the tolerance
        assert abs(deviation) <= 0.1, f"{nominal} Hz at {rate_hz} Hz: {measured:.2f} dB, table {table_db}"
        tested += 1
    assert tested == (9 if rate_hz == 16000 else 10)


def test_a_weighting_curve_is_zero_at_1khz_and_minus_inf_at_dc() -> None:
    assert abs(float(a_weighting_db(1000.0))) < 1e-3
    assert float(a_weighting_db(0.0)) == -np.inf


@pytest.mark.parametrize("rate_hz", [16000, 48000])
def test_full_scale_sine_reads_0_dbfs_aes17(rate_hz: int) -> None:
    levels = LevelMeter()(tone(1000.0, 2.0, rate_hz, dbfs=0.0), rate_hz)
    assert levels.laeq == pytest.approx(0.0, abs=0.01)
    assert levels.unit == "dBFS"


def test_calibration_offset_is_added_and_unit_becomes_dba() -> None:
    levels = LevelMeter(calibration_db=114.0)(tone(1000.0, 2.0, 48000), 48000)
    assert levels.laeq == pytest.approx(94.0, abs=0.01)
    assert levels.unit == "dB(A)"
    assert levels.to_event()["unit"] == "dB(A)"


@pytest.mark.parametrize("rate_hz", [16000, 48000])
def test_steady_tone_every_figure_equals_the_tone_level(rate_hz: int) -> None:
    levels = LevelMeter()(tone(1000.0, 10.0, rate_hz), rate_hz)
    for name in ("laeq", "lafmax", "lafmin", "la10", "la50", "la90"):
        assert getattr(levels, name) == pytest.approx(TONE_DBFS, abs=0.1), name


@pytest.mark.parametrize("burst_s", [0.05, 0.2, 1.0])
def test_tone_bursts_match_the_closed_form_fast_response(burst_s: float) -> None:
    """IEC 61672-1 toneburst response: LAFmax of a burst of length T over a quiet floor is
    10 log10(p_b (1 - e^(-T/tau)) + p_0 e^(-T/tau)); LAeq is the energy mean."""
    rate, seconds, loud, quiet = 48000, 10.0, -20.0, -60.0
    signal = tone(1000.0, seconds, rate, dbfs=quiet)
    loud_signal = tone(1000.0, seconds, rate, dbfs=loud)
    n_burst = round(burst_s * rate)
    starts = [round(s * rate) for s in (1.0, 3.0, 5.0, 7.0)]
    for s in starts:
        signal[s : s + n_burst] = loud_signal[s : s + n_burst]
    levels = LevelMeter()(signal, rate)
    decay = math.exp(-burst_s / FAST_TAU_S)
    assert levels.lafmax == pytest.approx(db(power(loud) * (1 - decay) + power(quiet) * decay), abs=0.1)
    loud_share = len(starts) * burst_s / seconds
    assert levels.laeq == pytest.approx(db(loud_share * power(loud) + (1 - loud_share) * power(quiet)), abs=0.1)
    assert levels.la90 == pytest.approx(quiet, abs=0.1)  # most of the time the floor, whatever the bursts
    assert levels.lafmin == pytest.approx(quiet, abs=0.1)


def test_step_in_level_gives_closed_form_ln_max_min_and_laeq() -> None:
    """30 % of the window at -50 dBFS then 70 % at -20: the top half of the fast levels sit at -20 (L10, L50), the
    bottom 10 % at -50 (L90); the rise takes < 1 s so it moves no percentile."""
    rate, seconds, low, high = 48000, 10.0, -50.0, -20.0
    split = round(0.3 * seconds * rate)
    signal = tone(1000.0, seconds, rate, dbfs=high)
    signal[:split] = tone(1000.0, seconds, rate, dbfs=low)[:split]
    levels = LevelMeter()(signal, rate)
    assert levels.laeq == pytest.approx(db(0.3 * power(low) + 0.7 * power(high)), abs=0.1)
    assert levels.lafmax == pytest.approx(high, abs=0.1)
    assert levels.lafmin == pytest.approx(low, abs=0.1)
    assert levels.la10 == pytest.approx(high, abs=0.1)
    assert levels.la50 == pytest.approx(high, abs=0.1)
    assert levels.la90 == pytest.approx(low, abs=0.1)


def test_fast_level_of_a_step_down_decays_at_the_fast_time_constant() -> None:
    """After the tone stops, the fast level falls 10 log10(e) / tau = 34.7 dB/s (IEC: the F decay rate)."""
    rate = 48000
    signal = tone(1000.0, 4.0, rate)
    signal[2 * rate :] = 0.0
    meter = LevelMeter()
    from custom.daemon.noise.levels import fast_mean_square, power_db

    fast = power_db(fast_mean_square(meter.weighted(signal, rate) ** 2, rate, step=48))  # every ms
    rate_db_per_s = (fast[2200] - fast[2700]) / 0.5
    assert rate_db_per_s == pytest.approx(10 * math.log10(math.e) / FAST_TAU_S, rel=0.01)


def test_real_clip_matches_an_independent_time_domain_meter() -> None:
    """A real street clip, upsampled to 48 kHz, measured by the production meter and by an IIR meter written here:
    scipy's bilinear A-weighting (from the IEC poles) and lfilter exponential averaging."""
    signal = pytest.importorskip("scipy.signal")
    clip = next((shared_dir() / "data" / "clips").rglob("*.flac"))
    audio = read_audio(clip, 16000)
    rate = 48000
    samples = soxr.resample(audio.waveform[: 10 * 16000], 16000, rate).astype(np.float64)
    zeros = [0.0] * 4
    poles = [-2 * np.pi * f for f in (20.598997, 20.598997, 107.65265, 737.86223, 12194.217, 12194.217)]
    z, p, k = signal.bilinear_zpk(zeros, poles, 1.0, rate)
    sos = signal.zpk2sos(z, p, k)
    _, response = signal.sosfreqz(sos, worN=[1000.0], fs=rate)
    weighted = signal.sosfilt(sos, samples) / abs(response[0])  # normalised to 0 dB at 1 kHz
    squared = weighted**2
    a = math.exp(-1 / (FAST_TAU_S * rate))
    fast = signal.lfilter([1 - a], [1, -a], squared, zi=[a * np.mean(squared[: rate // 8])])[0]
    fast_db = 10 * np.log10(fast * 2)
    expected = {
        "laeq": db(float(np.mean(squared))),
        "lafmax": float(fast_db.max()),
        "la10": float(np.percentile(fast_db[:: rate // 1000], 90)),
        "la50": float(np.percentile(fast_db[:: rate // 1000], 50)),
        "la90": float(np.percentile(fast_db[:: rate // 1000], 10)),
    }
    levels = LevelMeter()(samples.astype(np.float32), rate)
    for name, value in expected.items():
        assert getattr(levels, name) == pytest.approx(value, abs=0.2), f"{clip.name} {name}"
    assert levels.laeq > -80  # a real recording, not silence: the comparison means something


def test_numpy_and_scipy_fft_paths_agree() -> None:
    """Without the optional scipy (extra `fastfft`) the meter falls back on numpy's float64 FFT: same figures."""
    pytest.importorskip("scipy.fft")
    rng = np.random.default_rng(1)
    noise = (rng.normal(0, 0.05, 10 * 48000) + tone(63.0, 10.0, 48000, -30)).astype(np.float32)
    fast, plain = LevelMeter(use_scipy=True)(noise, 48000), LevelMeter(use_scipy=False)(noise, 48000)
    for name in ("laeq", "lafmax", "lafmin", "la10", "la50", "la90"):
        assert getattr(fast, name) == pytest.approx(getattr(plain, name), abs=0.01), name
