"""`custom-sensord classify` as a user runs it: a real subprocess, real bundle, real clips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import soundfile

from testing.shared import ROOT

SCHEMA = json.loads((ROOT / "wire/event.schema.json").read_text())


def classify(*args: str | Path, bundle: Path | None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "custom.daemon.cli", "classify", *map(str, args)]
    if bundle is not None:
        command += ["--bundle", str(bundle)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_json_events_validate_and_carry_every_class(yamnet_bundle: Path, shared: Path):
    siren = shared / "data/clips/siren/us8k_102871-8-0-8.flac"
    long_clip = shared / "data/clips/bird/xc563936_t000.flac"  # ~10 s: one full window
    result = classify("--json", siren, long_clip, bundle=yamnet_bundle)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(events) == 2
    for event in events:
        jsonschema.validate(event, SCHEMA)
        assert len(event["scores"]) == 10
    assert events[0]["file"] == str(siren) and events[0]["window"]["padded"] is True
    assert events[0]["top"]["name"] == "Siren"
    assert "Siren" in [label["name"] for label in events[0]["labels"]]


def test_long_recording_is_cut_into_ten_second_windows(yamnet_bundle: Path, tmp_path: Path, shared: Path):
    audio, rate = soundfile.read(shared / "data/clips/siren/us8k_102871-8-0-8.flac", dtype="float32")
    long = np.tile(audio, 7)[: int(23.5 * rate)]  # 23.5 s -> 10 + 10 + 3.5 (padded)
    path = tmp_path / "long.wav"
    soundfile.write(path, long, rate)
    result = classify("--json", path, bundle=yamnet_bundle)
    assert result.returncode == 0, result.stderr
    windows = [json.loads(line)["window"] for line in result.stdout.splitlines()]
    assert [w["offset_s"] for w in windows] == [0.0, 10.0, 20.0]
    assert [w["padded"] for w in windows] == [False, False, True]
    assert windows[2]["duration_s"] == pytest.approx(3.5, abs=0.01)


def test_levels_are_measured_at_the_files_own_rate(yamnet_bundle: Path, tmp_path: Path, shared: Path):
    """A 48 kHz recording with energy above 8 kHz: classify measures it on the full band, as the live sensor does at
    its capture rate (decoding at the model's 16 kHz would drop the 12 kHz tone from the level)."""
    import soxr

    from custom.daemon.noise.levels import LevelMeter

    audio, rate = soundfile.read(shared / "data/clips/siren/us8k_102871-8-0-8.flac", dtype="float32")
    wide = soxr.resample(np.tile(audio, 3)[: 10 * rate], rate, 48000).astype(np.float32)
    wide += 0.3 * np.sin(2 * np.pi * 12000 * np.arange(len(wide)) / 48000).astype(np.float32)
    path = tmp_path / "wide.wav"
    soundfile.write(path, wide, 48000, subtype="FLOAT")
    result = classify("--json", path, bundle=yamnet_bundle)
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout.splitlines()[0])
    full_band = LevelMeter()(wide, 48000).laeq
    model_band = LevelMeter()(soxr.resample(wide, 48000, 16000).astype(np.float32), 16000).laeq
    assert full_band - model_band > 3.0  # the test means something: the tone carries most of the energy
    assert event["level"]["laeq"] == pytest.approx(full_band, abs=0.05)
    assert event["top"]["name"] == "Siren"  # the model still hears its own band


def test_text_output_names_file_and_labels(yamnet_bundle: Path, shared: Path):
    clip = shared / "data/clips/siren/us8k_102871-8-0-8.flac"
    result = classify(clip, bundle=yamnet_bundle)
    assert result.returncode == 0
    assert str(clip) in result.stdout and "top Siren" in result.stdout


def _one_line_error(result: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if not line.startswith("INFO:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing.wav", "no such file"),
        (lambda d: (d / "text.wav").write_text("hello, not audio") and d / "text.wav", "cannot decode as audio"),
        (lambda d: _write(d / "silent.wav", np.zeros(32000)), "silent recording"),
        (lambda d: _write(d / "short.wav", 0.1 * np.ones(8000)), "only 0.50 s of audio"),
        (lambda d: d, "is a directory"),
    ],
)
def test_bad_input_files_exit_66_with_one_line(yamnet_bundle: Path, tmp_path: Path, make, needle: str):
    path = make(tmp_path)
    _one_line_error(classify(path, bundle=yamnet_bundle), 66, str(path), needle)


def _write(path: Path, samples: np.ndarray) -> Path:
    soundfile.write(path, samples.astype(np.float32), 16000)
    return path


def test_good_files_still_classified_when_one_is_bad(yamnet_bundle: Path, tmp_path: Path, shared: Path):
    clip = shared / "data/clips/dog/us8k_125523-3-0-11.flac"
    result = classify("--json", tmp_path / "nope.flac", clip, bundle=yamnet_bundle)
    assert result.returncode == 66
    assert len(result.stdout.splitlines()) == 1


def test_corrupt_bundle_exits_78(tmp_path: Path, shared: Path, yamnet_bundle: Path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(yamnet_bundle, bundle)
    (bundle / "yamnet.tflite").write_bytes(b"broken")
    result = classify(shared / "data/clips/dog/us8k_125523-3-0-11.flac", bundle=bundle)
    _one_line_error(result, 78, "checksum mismatch", "yamnet.tflite")


def test_missing_bundle_exits_78(tmp_path: Path, shared: Path):
    result = classify(shared / "data/clips/dog/us8k_125523-3-0-11.flac", bundle=tmp_path / "none")
    _one_line_error(result, 78, "bundle folder not found")


def test_usage_error_exits_2():
    assert classify(bundle=None).returncode == 2
