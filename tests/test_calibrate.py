"""`custom-sensord calibrate`: the one-line config edit, and end to end with the PulseAudio virtual mic playing a
1 kHz tone of known dBFS (what an acoustic calibrator does to a real microphone)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from custom.daemon.config import load_config
from custom.daemon.noise.calibrate import measure, set_calibration
from tests.conftest import ROOT

SHIPPED = (ROOT / "config.yaml").read_text()
RATE = 16000


def write_tone(path: Path, freq_hz: float, dbfs: float, seconds: float = 10.0) -> Path:
    t = np.arange(round(seconds * RATE)) / RATE
    soundfile.write(path, 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq_hz * t), RATE, subtype="PCM_24")
    return path


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_edit_changes_only_the_key_line_of_the_shipped_config(tmp_path: Path) -> None:
    edited = set_calibration(SHIPPED, 112.346)
    assert changed_lines(SHIPPED, edited) == [("  calibration_db: null", "  calibration_db: 112.35")]
    path = tmp_path / "config.yaml"
    path.write_text(edited)
    assert load_config(path).audio.calibration_db == pytest.approx(112.35)


def test_edit_keeps_a_trailing_comment_inserts_a_missing_key_and_refuses_flow_style() -> None:
    text = "# mine\naudio:\n    device: 2  # USB mic\n    calibration_db: 90.0   # old\nsensor_id: a\n"
    assert set_calibration(text, 100.0) == text.replace("90.0   # old", "100.00   # old")
    missing = "audio:\n  device: 2\nmqtt:\n  port: 1883\n"
    assert yaml.safe_load(set_calibration(missing, 99.5)) == {
        "audio": {"device": 2, "calibration_db": 99.5},
        "mqtt": {"port": 1883},
    }
    assert yaml.safe_load(set_calibration("sensor_id: x\n", 99.5)) == {
        "sensor_id": "x",
        "audio": {"calibration_db": 99.5},
    }
    assert set_calibration("audio: {device: 2}\n", 99.5) is None


def test_measure_rejects_what_is_not_a_steady_1khz_tone() -> None:
    from custom.daemon.noise.calibrate import CalibrationError, check

    t = np.arange(3 * RATE) / RATE
    check(measure((0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), RATE))
    with pytest.raises(CalibrationError, match="not ~1 kHz"):
        check(measure((0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), RATE))
    wobble = 0.1 * np.sin(2 * np.pi * 1000 * t) * (1 + 0.5 * (t > 1.5))
    with pytest.raises(CalibrationError, match="steady"):
        check(measure(wobble.astype(np.float32), RATE))
    noisy = 0.1 * np.sin(2 * np.pi * 1000 * t) + np.random.default_rng(0).normal(0, 0.1, len(t))
    with pytest.raises(CalibrationError, match="above the rest"):
        check(measure(noisy.astype(np.float32), RATE))


def calibrate(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "custom.daemon.cli", "calibrate", "--config", str(config), *args]
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_calibrate_end_to_end_with_the_virtual_mic(virtual_mic, tmp_path: Path) -> None:
    """A -26 dBFS 1 kHz tone stands in for a 94 dB calibrator: the offset must be 120.0 dB; then a tone 10 dB
    quieter must read 84 dB(A) with that offset (targets: within 0.2 dB)."""
    config = tmp_path / "config.yaml"
    config.write_text(SHIPPED)
    player = virtual_mic.play(write_tone(tmp_path / "cal.wav", 1000.0, -26.0), loop=True)
    done = calibrate(config, virtual_mic.env, "--reference-db", "94.0", "--seconds", "3")
    player.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    offset = float(re.search(r"calibration offset: (-?[\d.]+) dB", done.stdout).group(1))
    assert offset == pytest.approx(120.0, abs=0.2), done.stdout
    assert changed_lines(SHIPPED, config.read_text()) == [("  calibration_db: null", f"  calibration_db: {offset:.2f}")]
    assert load_config(config).audio.calibration_db == pytest.approx(offset)

    player = virtual_mic.play(write_tone(tmp_path / "quieter.wav", 1000.0, -36.0), loop=True)
    done = calibrate(config, virtual_mic.env, "--reference-db", "94.0", "--seconds", "3", "--dry-run")
    player.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    measured = float(re.search(r"measured (-?[\d.]+) dBFS", done.stdout).group(1))
    assert measured + offset == pytest.approx(84.0, abs=0.2), done.stdout
    print(
        f"\nCALIBRATE: offset {offset:.2f} dB (expected 120.00); -36 dBFS reads {measured + offset:.2f} dB(A) (84.00)"
    )

    flow = tmp_path / "flow.yaml"  # a layout the one-line edit cannot handle: the line to add is printed instead
    flow.write_text("audio: {channels: 1}  # mine\n")
    player = virtual_mic.play(tmp_path / "cal.wav", loop=True)
    done = calibrate(flow, virtual_mic.env, "--reference-db", "94.0", "--seconds", "2")
    player.stop()
    assert done.returncode == 73, done.stdout + done.stderr
    assert "add this yourself:\naudio:\n  calibration_db: 12" in done.stdout, done.stdout
    assert flow.read_text() == "audio: {channels: 1}  # mine\n"

    player = virtual_mic.play(write_tone(tmp_path / "a440.wav", 440.0, -26.0), loop=True)
    done = calibrate(config, virtual_mic.env, "--reference-db", "94.0", "--seconds", "2")
    player.stop()
    assert done.returncode == 65, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "not ~1 kHz" in done.stderr and "Traceback" not in done.stderr
    assert load_config(config).audio.calibration_db == pytest.approx(offset)  # a refused run leaves the file alone


def test_calibrate_says_so_in_one_line_when_the_microphone_gives_nothing(virtual_mic, tmp_path: Path) -> None:
    """The PulseAudio server stopped: the PortAudio device is gone, no audio arrives, and calibrate must end with its
    one-line 'no audio from the microphone' error and the bad-data exit code (it used to crash on the typed state)."""
    config = tmp_path / "config.yaml"
    config.write_text(SHIPPED)
    virtual_mic.stop()
    done = calibrate(config, virtual_mic.env, "--reference-db", "94.0", "--seconds", "1")
    assert done.returncode == 65, done.stdout + done.stderr
    last = done.stderr.splitlines()[-1]  # before it, the capture's own log says it is retrying the device
    assert last.startswith("custom-sensord calibrate: no audio from the microphone (open failed"), done.stderr
    assert "Traceback" not in done.stderr
    assert config.read_text() == SHIPPED
