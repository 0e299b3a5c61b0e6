"""`custom-sensord calibrate --reference-db 94.0`: the field procedure with a 1 kHz acoustic calibrator.

With the calibrator on the microphone, this records a few seconds from the configured input (same device, rate,
channels and gain as the daemon), checks that what it hears is a steady tone near 1 kHz (a calibrator that slipped
off, or street noise, must not become the offset), and sets `audio.calibration_db = reference - measured LAeq`.

The config file is edited in place as text, one line: the rest of the file and its comments stay as the operator
wrote them (a YAML dump would drop them). The edited text is validated before it replaces the file (atomically);
if the file cannot be written, the line to add is printed instead. Restart or `systemctl reload` the daemon after.

The measured level is A-weighted dBFS (AES17) with the configured gain already applied, so a later change of
`audio.gain_db` (or of the microphone) needs a new calibration.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from custom.wire import exitcodes

from .levels import LevelMeter

if TYPE_CHECKING:
    from ..config import AudioConfig

TONE_HZ = 1000.0
TONE_TOLERANCE_HZ = 50.0  # calibrators are within 1-2 %; wider only for a cheap mic's clock
STEADY_DB = 0.5  # largest spread of the 125 ms levels; a tone that wobbles more is not a calibrator on the mic
PURITY_DB = 10.0  # the tone must hold this much more energy than everything else in the band
SETTLE_S = 0.5  # the first audio after opening a stream may carry start-up transients
KEY_LINE = re.compile(r"^(?P<indent>\s+)calibration_db\s*:\s*(?P<value>[^#\n]*?)(?P<comment>\s+#.*)?$")


class CalibrationError(Exception):
    """The recording is not a calibrator tone (one line, for the operator)."""


@dataclass(frozen=True)
class Measurement:
    laeq_dbfs: float
    frequency_hz: float
    spread_db: float
    purity_db: float
    rate_hz: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference-db", type=float, required=True, help="the calibrator's level, dB SPL (e.g. 94.0)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to measure (default 5)")
    parser.add_argument("--dry-run", action="store_true", help="print the offset and the line; leave the file alone")


def measure(samples: np.ndarray, rate_hz: float) -> Measurement:
    """Level, frequency and steadiness of a (hopefully) calibrator recording."""
    levels = LevelMeter()(samples, rate_hz)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1.0 / rate_hz)
    peak = int(np.argmax(spectrum[1:])) + 1
    band = slice(max(1, peak - 8), peak + 9)  # the Hann main lobe and a little leakage
    tone = float(np.sum(spectrum[band]))
    rest = float(np.sum(spectrum[1:])) - tone
    fast = levels.fast_db  # the 125 ms fast level every 100 ms
    return Measurement(
        laeq_dbfs=levels.laeq,
        frequency_hz=float(freqs[peak]),
        spread_db=float(np.max(fast) - np.min(fast)) if len(fast) else 0.0,
        purity_db=float(10 * np.log10(tone / max(rest, 1e-30))),
        rate_hz=rate_hz,
    )


def check(m: Measurement) -> None:
    if abs(m.frequency_hz - TONE_HZ) > TONE_TOLERANCE_HZ:
        raise CalibrationError(f"the loudest tone is at {m.frequency_hz:.0f} Hz, not ~1 kHz: is the calibrator on?")
    if m.purity_db < PURITY_DB:
        raise CalibrationError(f"the 1 kHz tone is only {m.purity_db:.1f} dB above the rest: too much other sound")
    if m.spread_db > STEADY_DB:
        raise CalibrationError(f"the level moved by {m.spread_db:.1f} dB while measuring: hold the calibrator steady")


def record(config: AudioConfig, seconds: float) -> tuple[np.ndarray, float]:
    """`seconds` of audio (after SETTLE_S) from the configured microphone, through the daemon's own capture."""
    from ..audio.capture import MicCapture
    from ..audio.ringbuffer import USUAL_MAX_CAPTURE_RATE_HZ, RingBuffer

    total_s = seconds + SETTLE_S
    ring = RingBuffer.for_duration(
        total_s + 2.0, max_rate_hz=max(USUAL_MAX_CAPTURE_RATE_HZ, config.sample_rate_hz or 0)
    )
    capture = MicCapture(
        ring, device=config.device, sample_rate_hz=config.sample_rate_hz, channels=config.channels,
        gain_db=config.gain_db,
    )  # fmt: skip
    stop = threading.Event()
    capture.start()
    try:
        deadline = time.monotonic() + total_s + 10.0
        while time.monotonic() < deadline:
            rate = capture.rate_hz
            anchors = ring.anchors
            if rate and anchors and ring.written - anchors[0].sample >= round(total_s * rate):
                start = anchors[0].sample + round(SETTLE_S * rate)
                samples = ring.read(start, round(seconds * rate))
                if samples is None:
                    raise CalibrationError("audio was overwritten while reading; try again")
                return samples, float(rate)
            stop.wait(0.05)
        state = capture.state()
        raise CalibrationError(f"no audio from the microphone ({state.last_error or state.status})")
    finally:
        capture.stop()


def set_calibration(text: str, offset_db: float) -> str | None:
    """`text` with `audio.calibration_db` set; None if the file's layout is not one we can edit by line."""
    value = f"{offset_db:.2f}"
    lines = text.splitlines(keepends=True)
    audio_at = next((i for i, line in enumerate(lines) if re.match(r"^audio\s*:\s*(#.*)?$", line.rstrip("\n"))), None)
    if audio_at is None:
        if re.search(r"^audio\s*:", text, flags=re.MULTILINE):
            return None  # e.g. `audio: {device: 1}` flow style: not a one-line edit
        return text + ("" if text.endswith("\n") or not text else "\n") + f"audio:\n  calibration_db: {value}\n"
    indent = None
    for i in range(audio_at + 1, len(lines)):
        line = lines[i].rstrip("\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            break  # the next top-level key: the audio block has no calibration_db
        indent = indent or line[: len(line) - len(line.lstrip())]
        match = KEY_LINE.match(line)
        if match and match.group("indent") == indent:
            comment = match.group("comment") or ""
            lines[i] = f"{indent}calibration_db: {value}{comment}\n"
            return "".join(lines)
    lines.insert(audio_at + 1, f"{indent or '  '}calibration_db: {value}\n")
    return "".join(lines)


def write_config(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    from custom.wire.settings import ConfigError

    from ..config import load_config, parse_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"custom-sensord calibrate: {args.config}: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    if args.seconds < 1.0:
        print("custom-sensord calibrate: --seconds: measure at least 1 s", file=sys.stderr)
        return exitcodes.USAGE
    try:
        samples, rate = record(config.audio, args.seconds)
        m = measure(samples, rate)
        check(m)
    except CalibrationError as exc:
        print(f"custom-sensord calibrate: {exc}", file=sys.stderr)
        return exitcodes.DATA_ERROR
    offset = args.reference_db - m.laeq_dbfs
    print(
        f"measured {m.laeq_dbfs:.2f} dBFS(A) at {m.frequency_hz:.0f} Hz over {args.seconds:g} s "
        f"({m.rate_hz:.0f} Hz capture, steady within {m.spread_db:.2f} dB); reference {args.reference_db:.1f} dB"
    )
    print(f"calibration offset: {offset:.2f} dB")
    line = f"audio:\n  calibration_db: {offset:.2f}"
    if args.dry_run:
        print(f"dry run: add to {args.config}:\n{line}")
        return exitcodes.OK
    text = set_calibration(args.config.read_text(), offset)
    try:
        if text is None:
            raise OSError("its audio section is not in block style")
        import yaml

        parse_config(yaml.safe_load(text), base_dir=args.config.parent)  # never write a file the daemon refuses
        write_config(args.config, text)
    except (OSError, ConfigError) as exc:
        print(f"custom-sensord calibrate: cannot edit {args.config} ({exc}); add this yourself:\n{line}")
        return exitcodes.CANT_CREATE
    print(f"wrote audio.calibration_db: {offset:.2f} to {args.config}; reload the daemon to use it")
    return exitcodes.OK
