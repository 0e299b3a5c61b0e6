"""Bundle loading refuses every kind of bad bundle with a message naming the file and the problem."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from custom.daemon.model.bundle import MANIFEST_NAME, BundleError, load_bundle
from custom.daemon.model.inference import Model
from testing.bundles import edit_manifest


@pytest.fixture
def bundle_copy(yamnet_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(yamnet_bundle, target)
    return target


def test_yamnet_bundle_is_complete(yamnet_bundle: Path, shared: Path):
    bundle = load_bundle(yamnet_bundle)
    assert bundle.backbone == "yamnet" and bundle.backbone_model.input_kind == "waveform"
    assert len(bundle.classes) == 10 and all(0.0 < t < 1.0 for t in bundle.thresholds)
    # classes were mapped by mid: Siren is YAMNet output 390 and Dog 69 in the published class map
    by_name = {c.name: c for c in bundle.classes}
    assert 390 in by_name["Siren"].backbone_outputs and 69 in by_name["Dog"].backbone_outputs
    # default-bundle records which candidate shipped and the grouped-CV comparison that decided it
    choice = bundle.provenance["default_choice"]
    assert choice["shipped"] == ("head" if bundle.head is not None else "mapping")
    assert [c["name"] for c in choice["heads_compared"]] == ["yamnet"]  # --backbone yamnet: one head compared
    wins = choice["head"]["label_recall"] > choice["mapping"]["label_recall"]
    assert wins == (bundle.head is not None) or bundle.head is None
    if bundle.head is None:
        assert bundle.provenance["thresholds"]["clips"]["count"] == 277
    else:
        assert bundle.head.classes == bundle.class_names and "rule" in bundle.provenance["thresholds"]
    assert len(bundle.sha256) == 64


def test_bundle_scores_a_window(yamnet_bundle: Path):
    model = Model(load_bundle(yamnet_bundle))
    result = model.scores(np.zeros(160000, dtype=np.float32))
    frontend = model.bundle.frontend  # 0.96 s patches every 0.48 s (19) or, non-overlapping, every 0.96 s (10)
    assert frontend.patch_hop_frames in (48, 96)
    patches = (160000 - frontend.patch_samples) // frontend.patch_hop_samples + 1
    assert result.scores.shape == (10,) and result.patches == patches
    assert np.all((result.scores >= 0) & (result.scores <= 1))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: (b / "yamnet.tflite").unlink(), "yamnet.tflite: bundle file missing"),
        (lambda b: (b / "yamnet.tflite").write_bytes(b"TFL3" + b"\0" * 64), "yamnet.tflite: checksum mismatch"),
        (lambda b: (b / MANIFEST_NAME).write_text("{not json"), "manifest is not valid JSON"),
        (lambda b: (b / MANIFEST_NAME).unlink(), "cannot read manifest"),
        (lambda b: edit_manifest(b, lambda d: d.update(backbone="resnet")), "manifest backbone: must be one of"),
        (lambda b: edit_manifest(b, lambda d: d.pop("classes")), "manifest classes: missing"),
        (
            lambda b: edit_manifest(b, lambda d: d["classes"][3].update(threshold=1.5)),
            "manifest classes[3].threshold: must be 0..1",
        ),
        (lambda b: edit_manifest(b, lambda d: d["frontend"].update(hop=3)), "manifest frontend.hop: unknown key"),
        (lambda b: edit_manifest(b, lambda d: d.update(format_version=9)), "reads version 1 or 2, got 9"),
        (
            lambda b: edit_manifest(b, lambda d: d["models"]["backbone"]["input"].update(shape=[96, -1, 64])),
            "models.backbone.input.shape: must be a list of positive integers (the first may be -1: any batch)",
        ),
        (
            lambda b: edit_manifest(b, lambda d: d["models"]["backbone"]["input"].update(shape=[-1])),
            "models.backbone.input.shape: must be a list of positive integers",
        ),
    ],
)
def test_bad_bundles_are_refused_by_name(bundle_copy: Path, damage, message: str):
    damage(bundle_copy)
    with pytest.raises(BundleError) as error:
        Model(load_bundle(bundle_copy))
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_tensor_shape_not_as_the_manifest_says(bundle_copy: Path):
    edit_manifest(bundle_copy, lambda d: d["models"]["backbone"]["input"].update(shape=[1, 96, 64]))
    with pytest.raises(BundleError, match=r"input tensor is float32\[15600\], manifest says float32\[1, 96, 64\]"):
        Model(load_bundle(bundle_copy))


def test_truncated_model_with_matching_checksum_is_refused(bundle_copy: Path):
    """Someone truncated the model and 'fixed' the manifest: the runtime's refusal is still one clear line."""
    from custom.daemon.model.bundle import sha256_file

    model_file = bundle_copy / "yamnet.tflite"
    model_file.write_bytes(model_file.read_bytes()[:5000])
    edit_manifest(bundle_copy, lambda d: d["files"]["yamnet.tflite"].update(sha256=sha256_file(model_file)))
    with pytest.raises(BundleError, match="not a loadable TFLite model"):
        Model(load_bundle(bundle_copy))


def test_coral_patch_yamnet_cannot_take_a_batch(shared: Path):
    """Coral's patch YAMNet declares a fixed [1, 96, 64] input and reshapes to [1, 96, 64, 1] inside, so it runs
    one patch per invoke (measured in bench/RESULTS.md); the row runner does not try to batch it."""
    from custom.daemon.model.runtime import RowRunner

    path = shared / "models" / "yamnet_spectra_in.tflite"
    runner = RowRunner(path)
    assert runner.input_signature == (1, 96, 64) and not runner.batched
    patches = np.random.default_rng(0).normal(size=(3, 96, 64)).astype(np.float32)
    assert runner(patches).shape == (3, 521)
    with pytest.raises(RuntimeError):  # the graph's fixed reshape refuses a batch of 3
        runner.interpreter.resize_tensor_input(runner.input_index, [3, 96, 64])
        runner.interpreter.allocate_tensors()


def test_manifest_errors_name_the_line_like_config_errors(bundle_copy: Path):
    """Manifests go through the config files' validation engine: key path first, the key's line last."""
    edit_manifest(bundle_copy, lambda d: d["classes"][3].update(threshold=1.5))
    lines = (bundle_copy / MANIFEST_NAME).read_text().splitlines()
    classes_at = next(i for i, line in enumerate(lines) if line.strip().startswith('"classes"'))
    threshold_lines = [i + 1 for i, line in enumerate(lines) if '"threshold": 1.5' in line and i > classes_at]
    with pytest.raises(BundleError) as error:
        load_bundle(bundle_copy)
    expected = f"manifest classes[3].threshold: must be 0..1, got 1.5 (line {threshold_lines[0]})"
    assert str(error.value).endswith(expected)
