"""The bundle owns its band: a window is limited to the band its manifest names (version 2: band_rate_hz; version 1:
16 kHz) before any front end sees it, and an ensemble resamples that band once per front-end rate its members need.

Real models: the committed default bundle (models/default, YAMNet 16 kHz + EfficientAT 32 kHz) assembled from
../shared, its manifest edited; real soxr, watched (not replaced) to see which conversions a window costs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from custom.daemon import pipeline as pipeline_module
from custom.daemon.audio.audiofile import read_audio
from custom.daemon.audio.windows import Window
from custom.daemon.model import inference
from custom.daemon.model.assemble import assemble
from custom.daemon.pipeline import bundle_pipeline
from testing.shared import ROOT

SIREN = "data/clips/siren/us8k_102871-8-0-8.flac"
CAPTURE_HZ = 48000


@pytest.fixture(scope="module")
def default_bundle(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble(ROOT / "models/default", shared, tmp_path_factory.mktemp("band") / "default")


@pytest.fixture(scope="module")
def siren_window(shared: Path) -> Window:
    audio = read_audio(shared / SIREN, CAPTURE_HZ).waveform[: 10 * CAPTURE_HZ]
    return Window(audio, float(CAPTURE_HZ), 0.0, 10.0, 0, 0)


def _edited(bundle: Path, out: Path, edit: Callable[[dict], None]) -> Path:
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every (from, to) rate soxr is asked to convert, as the pipeline and the models call it."""
    seen: list[tuple[int, int]] = []
    real = inference.resample

    def watched(audio: np.ndarray, rate_hz: int, target_hz: int) -> np.ndarray:
        if rate_hz != target_hz:
            seen.append((rate_hz, target_hz))
        return real(audio, rate_hz, target_hz)

    monkeypatch.setattr(pipeline_module, "resample", watched)
    monkeypatch.setattr(inference, "resample", watched)
    return seen


def test_a_window_is_limited_to_the_band_the_manifest_names(default_bundle, siren_window, conversions, tmp_path):
    def band_22k(manifest: dict) -> None:
        for member in manifest["members"]:
            member["band_rate_hz"] = 22050

    wide = bundle_pipeline(_edited(default_bundle, tmp_path / "wide", band_22k), threads=1, sensor_id="t")
    assert wide.model.band_rate_hz == 22050
    wide_event = wide.score(siren_window).event
    assert conversions == [(CAPTURE_HZ, 22050), (22050, 16000), (22050, 32000)]

    conversions.clear()
    shipped = bundle_pipeline(default_bundle, threads=1, sensor_id="t")
    event = shipped.score(siren_window).event
    assert conversions == [(CAPTURE_HZ, 16000), (16000, 32000)]  # YAMNet takes the 16 kHz band as it is
    assert event.top_name == wide_event.top_name == "Siren"
    assert event.scores != wide_event.scores  # the band reached the models: they heard something else


def test_a_version_1_bundle_means_the_16_khz_band(yamnet_bundle, siren_window, conversions):
    pipeline = bundle_pipeline(yamnet_bundle, threads=1, sensor_id="t")
    assert pipeline.bundle.band_rate_hz == pipeline.model.band_rate_hz == 16000
    assert pipeline.score(siren_window).event.top_name == "Siren"
    assert conversions == [(CAPTURE_HZ, 16000)]


@pytest.mark.parametrize("threads", [1, 3])
def test_members_sharing_a_rate_resample_once(default_bundle, siren_window, conversions, tmp_path, threads):
    """EfficientAT split into two members of half its weight: the same average, one 16 -> 32 kHz conversion."""

    def split(manifest: dict) -> None:
        yamnet, efficientat = sorted(manifest["members"], key=lambda m: m["backbone"] != "yamnet")
        halves = [{**efficientat, "weight": efficientat["weight"] / 2} for _ in range(2)]
        manifest["members"] = [yamnet, *halves]

    split_bundle = bundle_pipeline(_edited(default_bundle, tmp_path / "split", split), threads, sensor_id="t")
    assert len(split_bundle.bundle.members) == 3
    got = split_bundle.score(siren_window).event.scores
    assert conversions == [(CAPTURE_HZ, 16000), (16000, 32000)]
    expected = bundle_pipeline(default_bundle, threads=1, sensor_id="t").score(siren_window).event.scores
    assert got == pytest.approx(expected, abs=2e-4)
