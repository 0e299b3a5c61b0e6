"""The committed default bundle (models/default): rebuilt from ../shared it gives the same head, and assembled
without TensorFlow it refuses a wrong backbone and classifies a real siren as Siren."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testing.shared import ROOT

PREBUILT = ROOT / "models/default"
SIREN = "data/clips/siren/us8k_102871-8-0-8.flac"


def assemble(prebuilt: Path, shared: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "custom.daemon.cli", "bundle", "assemble", "--prebuilt", str(prebuilt)]
    command += ["--shared", str(shared), "--out", str(out)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _heads(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tflite"))}


@pytest.fixture(scope="module")
def assembled(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("assembled") / "bundle"
    result = assemble(PREBUILT, shared, out)
    assert result.returncode == 0, result.stderr
    return out


def test_assembled_bundle_loads_and_hears_a_siren(assembled: Path, shared: Path):
    from custom.daemon.model.bundle import load_bundle

    bundle = load_bundle(assembled)
    assert (
        bundle.provenance["default_choice"]["shipped"] == _manifest(PREBUILT)["provenance"]["default_choice"]["shipped"]
    )
    command = [sys.executable, "-m", "custom.daemon.cli", "classify", "--json", str(shared / SIREN)]
    result = subprocess.run([*command, "--bundle", str(assembled)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout.splitlines()[0])
    assert event["top"]["name"] == "Siren", event["scores"]


def test_assembly_needs_no_tensorflow(tmp_path: Path, shared: Path):
    """Run with TensorFlow made unimportable: the quickstart and a Pi have none."""
    blocker = tmp_path / "block"
    (blocker / "tensorflow").mkdir(parents=True)
    (blocker / "tensorflow/__init__.py").write_text("raise ImportError('TensorFlow is blocked in this test')\n")
    command = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(blocker)!r}); "
               "from custom.daemon.cli import main; sys.exit(main())", "bundle", "assemble"]  # fmt: skip
    command += ["--prebuilt", str(PREBUILT), "--shared", str(shared), "--out", str(tmp_path / "bundle")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "assembled" in result.stdout


RECIPE = json.loads((PREBUILT / "manifest.json").read_text())["provenance"]["assembly"]


@pytest.mark.parametrize("wrong", sorted(entry["source"] for entry in RECIPE.values()))
def test_wrong_backbone_is_refused_with_one_line(tmp_path: Path, shared: Path, wrong: str):
    """A shared folder where one published backbone is some other model: exit 78, one line naming that file, and
    no bundle written."""
    fake = tmp_path / "shared"
    (fake / "models").mkdir(parents=True)
    for entry in RECIPE.values():
        (fake / entry["source"]).symlink_to(shared / entry["source"])
    (fake / wrong).unlink()
    shutil.copyfile(shared / "models/yamnet_spectra_in.tflite", fake / wrong)
    out = tmp_path / "bundle"
    result = assemble(PREBUILT, fake, out)
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{fake / wrong}: sha256" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".bundle.*"))


def test_install_default_bundle_refuses_a_wrong_backbone(tmp_path: Path, shared: Path):
    """deploy/install.sh --default-bundle assembles with the sensor's package and passes the refusal on: exit 78."""
    fake = tmp_path / "shared"
    (fake / "models").mkdir(parents=True)
    for entry in RECIPE.values():
        shutil.copyfile(shared / "models/yamnet_spectra_in.tflite", fake / entry["source"])
    env = {**os.environ, "CUSTOM_SHARED": str(fake), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    command = ["bash", str(ROOT / "deploy/install.sh"), "--root", str(tmp_path / "root"), "--default-bundle"]
    result = subprocess.run([*command, "--no-start"], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 78, result.stderr
    assert "sha256" in result.stderr and str(fake / "models") in result.stderr
    assert not (tmp_path / "root/var/lib/custom-sensor/bundle").exists()


def test_missing_backbone_exits_66(tmp_path: Path):
    (tmp_path / "shared/models").mkdir(parents=True)
    result = assemble(PREBUILT, tmp_path / "shared", tmp_path / "bundle")
    assert result.returncode == 66
    assert len(result.stderr.strip().splitlines()) == 1 and "not found" in result.stderr


@pytest.mark.tf
def test_committed_head_is_what_default_bundle_builds(shared: Path, tmp_path: Path):
    """The one documented command, run again from ../shared, gives byte-identical head(s) and the same manifest
    (files, classes, thresholds, head specs, assembly recipe); only timestamps and timings may differ. If this fails
    after a deliberate change to the head builder, rebuild: custom-convert default-bundle --commit-dir models/default
    --out /tmp/default-bundle."""
    from custom.convert.cli import main as convert

    commit = tmp_path / "default"
    status = convert(["default-bundle", "--shared", str(shared), "--out", str(tmp_path / "bundle"),
                      "--commit-dir", str(commit)])  # fmt: skip
    assert status == 0
    assert _heads(commit).keys() == _heads(PREBUILT).keys()
    for name, data in _heads(commit).items():
        assert data == _heads(PREBUILT)[name], f"{name} differs from the committed models/default/{name}"
    fresh, committed = _manifest(commit), _manifest(PREBUILT)
    assert fresh["provenance"]["assembly"] == committed["provenance"]["assembly"]
    del fresh["provenance"], committed["provenance"]
    assert fresh == committed


def test_model_card_speaks_for_the_committed_model() -> None:
    """models/default/MODEL_CARD.md is the build's own: its label recall is the manifest's, and it names what
    trained the model and on what licence terms."""
    card = (PREBUILT / "MODEL_CARD.md").read_text()
    provenance = _manifest(PREBUILT)["provenance"]
    head = provenance["cross_validated"]["head"]
    assert f"| {head['label_recall']:.3f} | >= 0.90 |" in card
    licences = provenance["training"]["licences"]
    assert f"`--licences {licences['filter']}`" in card
    assert sum(licences["recordings_by_family"].values()) == provenance["training"]["recordings"]
    for family, count in licences["recordings_by_family"].items():
        assert f"| {family} | {count} |" in card
