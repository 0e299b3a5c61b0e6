"""The manifest is written by the dataclasses that read it: a manifest read and written again is the same bytes, for
both layouts, so a field added to a reader dataclass is written without a second edit."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from custom.daemon.model.bundle import (
    MANIFEST_NAME,
    BundleDraft,
    ClassSpec,
    EnsembleDraft,
    HeadSpec,
    MemberDraft,
    ModelSpec,
    TensorSpec,
    VetoSpec,
    manifest_text,
    read_manifest,
    write_bundle,
)
from custom.daemon.model.frontend import VGGISH, YAMNET
from custom.daemon.model.frontend_efficientat import EFFICIENTAT
from testing.shared import ROOT

CLASSES = [ClassSpec("Siren", "Siren", "/m/03kmc9", 0.123456789), ClassSpec("Dog", "Dog", "/m/0bt9lr", 0.5)]


def _again(text: str) -> str:
    return manifest_text(read_manifest(text, MANIFEST_NAME))


def _model(file: str, kind: str, outputs: int) -> ModelSpec:
    return ModelSpec(
        file=file, input_kind=kind, input=TensorSpec((1, 96, 64), "float32"), output=TensorSpec((1, outputs), "int8")
    )


def _sources(tmp_path: Path, *names: str) -> dict[str, Path]:
    """Files with distinct bytes: write_bundle and the reader check sha256 and size, never the model inside."""
    for name in names:
        (tmp_path / name).write_bytes(name.encode() * 3)
    return {name: tmp_path / name for name in names}


def _vggish(tmp_path: Path) -> BundleDraft:
    """Version 1 with every optional section a VGGish bundle has: classifier and postprocess; no class outputs."""
    return BundleDraft(
        bundle_id="vggish-urban10", version="1.0.0", backbone="vggish", frontend=VGGISH,
        backbone_model=_model("vggish.tflite", "log_mel", 128), classes=CLASSES,
        sources=_sources(tmp_path, "vggish.tflite", "classifier.tflite", "pca.npz"),
        classifier_model=_model("classifier.tflite", "log_mel", 2),
        postprocess={"kind": "audioset_pca", "file": "pca.npz"}, provenance={"tool": "test", "nested": [1, [2, None]]},
    )  # fmt: skip


def _ensemble(tmp_path: Path) -> EnsembleDraft:
    """Version 2: two members, a veto on one head, class outputs left out (the members' heads score the classes)."""
    veto = VetoSpec(foreign_outputs=(3, 4), class_outputs=((390,), (69, 70)), min_score=0.3, max_own=0.05)
    head = HeadSpec(_model("head_yamnet.tflite", "features", 2), 1, TensorSpec((-1, 1024), "float32"), "mean_max",
                    False, ("Siren", "Dog"), veto=veto)  # fmt: skip
    other = dataclasses.replace(head, model=dataclasses.replace(head.model, file="head_efficientat.tflite"), veto=None)
    members = [
        MemberDraft("yamnet", YAMNET, _model("yamnet.tflite", "waveform", 521), head, 0.4),
        MemberDraft("efficientat", EFFICIENTAT, _model("efficientat.tflite", "efficientat_log_mel", 527), other, 0.6),
    ]
    names = ("yamnet.tflite", "efficientat.tflite", "head_yamnet.tflite", "head_efficientat.tflite")
    return EnsembleDraft("both-heads", "2.0.0", members, CLASSES, _sources(tmp_path, *names), 16000, 10.0, {"a": 1})


@pytest.mark.parametrize("make", [_vggish, _ensemble], ids=["version-1", "version-2"])
def test_written_manifest_reads_and_writes_back_byte_identical(tmp_path: Path, make) -> None:
    bundle = write_bundle(make(tmp_path), tmp_path / "bundle")
    text = (bundle.path / MANIFEST_NAME).read_text()
    assert _again(text) == text
    data = json.loads(text)
    assert [c["threshold"] for c in data["classes"]] == [0.1235, 0.5]  # what ships, to 4 decimals
    assert all("backbone_outputs" not in c for c in data["classes"])  # an empty default is left out, read back as ()


def test_committed_version_2_manifest_round_trips() -> None:
    text = (ROOT / "models/default/manifest.json").read_text()
    assert json.loads(text)["format_version"] == 2
    assert _again(text) == text


def test_built_version_1_headed_manifest_round_trips(yamnet_bundle: Path) -> None:
    """The bundle `custom-convert default-bundle --backbone yamnet` writes: a head with class outputs."""
    text = (yamnet_bundle / MANIFEST_NAME).read_text()
    data = json.loads(text)
    assert data["format_version"] == 1 and "head" in data and data["classes"][0]["backbone_outputs"]
    assert _again(text) == text
