"""`custom-convert vggish` on checkpoints written here in the official TF1 format.

The official vggish_model.ckpt cannot be downloaded on these machines, so correctness comes from construction:
variable names and shapes are checked against the reference table, the Keras rebuild is compared with a TF1 graph
written after vggish_slim.py (restored by a Saver, an independent path), and every quantization mode is compared
with that float reference on real clips and run in both TFLite runtimes. Most tests use a narrow network with the
official names (SMALL) so all four modes convert in seconds; one test converts a full-size checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from custom.convert.tflite.export import QUANTIZE_MODES
from custom.daemon.model.bundle import BundleError, load_bundle
from custom.daemon.model.inference import Model
from custom.daemon.model.postprocess import AudioSetPCA
from custom.daemon.model.runtime import load_interpreter
from custom.wire import exitcodes
from testing.vggish import (
    SMALL,
    clip_patches,
    clip_paths,
    random_weights,
    reference_embeddings,
    write_checkpoint,
    write_classifier,
)

pytestmark = pytest.mark.tf
tf = pytest.importorskip("tensorflow")

from custom.convert.backbones import vggish  # noqa: E402  (imports TensorFlow lazily, but its tests need it anyway)
from custom.convert.backbones.vggish_model import (  # noqa: E402
    OFFICIAL,
    CheckpointError,
    build_keras,
    expected_variables,
    read_checkpoint,
)

TFLITE214_ENV = "CUSTOM_TFLITE214_PYTHON"
TFLITE214_HOWTO = (
    "python3 -m venv /opt/custom-tflite214 && "
    "/opt/custom-tflite214/bin/pip install 'numpy<2' tflite-runtime==2.14.0 && "
    "export CUSTOM_TFLITE214_PYTHON=/opt/custom-tflite214/bin/python"
)
MIN_COSINE = 0.999  # the bar for every mode, on real clips


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def convert_args(checkpoint: Path, pca: Path, classifier: Path, out: Path, **extra: Any) -> vggish.BuildOptions:
    return vggish.BuildOptions(checkpoint=checkpoint, pca=pca, classifier=classifier, out=out, **extra)


@pytest.fixture(scope="module")
def pca_file(shared: Path) -> Path:
    return shared / "models" / "vggish_pca_params.npz"


@pytest.fixture(scope="module")
def clips_dir(shared: Path) -> Path:
    return shared / "data" / "clips"


@pytest.fixture(scope="module")
def real_patches(shared: Path) -> np.ndarray:
    """Log-mel patches of one real clip per class (the same front end the daemon runs)."""
    return clip_patches(clip_paths(shared, per_class=1))


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "vggish_model.ckpt", random_weights(SMALL, seed=1))


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_classifier(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def small_reference(small_checkpoint: Path, real_patches: np.ndarray) -> np.ndarray:
    return reference_embeddings(small_checkpoint, real_patches, SMALL)


@pytest.fixture(scope="module")
def small_bundles(
    tmp_path_factory: pytest.TempPathFactory, small_checkpoint: Path, pca_file: Path, classifier_dir: Path, clips_dir
) -> dict[str, Path]:
    """One bundle per quantization mode, converted through the command's own code (narrow network)."""
    root = tmp_path_factory.mktemp("bundles")
    bundles = {}
    for mode in QUANTIZE_MODES:
        out = root / mode
        args = convert_args(
            small_checkpoint,
            pca_file,
            classifier_dir,
            out,
            quantize=mode,
            calibration_audio=clips_dir,
            calibration_patches=40,
        )
        assert vggish.build(args, SMALL) == exitcodes.OK, mode
        bundles[mode] = out
    return bundles


def test_variable_table_is_the_official_one() -> None:
    # Names and shapes as in vggish_slim.py / vggish_model.ckpt (slim.repeat names conv3/conv3_1 ... fc1/fc1_2).
    official = {
        "vggish/conv1/weights": (3, 3, 1, 64),
        "vggish/conv1/biases": (64,),
        "vggish/conv2/weights": (3, 3, 64, 128),
        "vggish/conv2/biases": (128,),
        "vggish/conv3/conv3_1/weights": (3, 3, 128, 256),
        "vggish/conv3/conv3_1/biases": (256,),
        "vggish/conv3/conv3_2/weights": (3, 3, 256, 256),
        "vggish/conv3/conv3_2/biases": (256,),
        "vggish/conv4/conv4_1/weights": (3, 3, 256, 512),
        "vggish/conv4/conv4_1/biases": (512,),
        "vggish/conv4/conv4_2/weights": (3, 3, 512, 512),
        "vggish/conv4/conv4_2/biases": (512,),
        "vggish/fc1/fc1_1/weights": (12288, 4096),
        "vggish/fc1/fc1_1/biases": (4096,),
        "vggish/fc1/fc1_2/weights": (4096, 4096),
        "vggish/fc1/fc1_2/biases": (4096,),
        "vggish/fc2/weights": (4096, 128),
        "vggish/fc2/biases": (128,),
    }
    assert expected_variables(OFFICIAL) == official
    assert OFFICIAL.parameter_count == 72_141_184
    assert [layer.relu for layer in OFFICIAL.layers()] == [True] * 8 + [False]  # fc2 is the pre-activation embedding


def test_keras_rebuild_equals_tf1_reference(
    small_checkpoint: Path, real_patches: np.ndarray, small_reference: np.ndarray
) -> None:
    keras = build_keras(read_checkpoint(small_checkpoint, SMALL), SMALL)
    ours = keras.predict(real_patches, verbose=0)
    assert ours.shape == (len(real_patches), 128)
    assert np.abs(small_reference).max() > 1.0  # the net is not dead: the comparison below can fail
    np.testing.assert_allclose(ours, small_reference, rtol=1e-4, atol=1e-4 * np.abs(small_reference).max())


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_tflite_matches_float_on_real_clips(
    mode: str, small_bundles: dict[str, Path], real_patches: np.ndarray, small_reference: np.ndarray
) -> None:
    got, _ = vggish.tflite_embeddings(small_bundles[mode] / vggish.BACKBONE_FILE, real_patches, threads=1)
    similarity = cosine(got, small_reference)
    assert similarity.min() >= MIN_COSINE, f"{mode}: cosine min {similarity.min():.5f}"
    check = load_bundle(small_bundles[mode]).provenance["check_vs_float"]
    assert check["cosine_min"] >= vggish.MIN_COSINE[mode]


@pytest.mark.parametrize("mode", QUANTIZE_MODES)
def test_bundle_classifies_a_clip(mode: str, small_bundles: dict[str, Path], shared: Path, pca_file: Path) -> None:
    bundle = load_bundle(small_bundles[mode])
    assert bundle.backbone == "vggish" and bundle.postprocess == {
        "kind": "audioset_pca",
        "file": "vggish_pca_params.npz",
    }
    assert bundle.files["vggish_pca_params.npz"] == vggish.sha256_file(pca_file)  # copied unchanged
    assert bundle.thresholds == (0.5,) * 10
    assert bundle.provenance["quantize"] == mode
    clip = clip_paths(shared, per_class=1)[0]
    audio, rate = soundfile.read(clip, dtype="float32")
    assert rate == 16000
    scores = Model(bundle).scores(audio).scores
    assert scores.shape == (10,) and np.all((scores >= 0) & (scores <= 1))


def test_classify_command_runs_the_bundle(small_bundles: dict[str, Path], shared: Path) -> None:
    clip = clip_paths(shared, per_class=1)[0]
    cmd = [sys.executable, "-m", "custom.daemon.cli", "classify", "--bundle", str(small_bundles["int8"]), "--json"]
    done = subprocess.run([*cmd, str(clip)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert events, done.stdout
    assert json.dumps(events[0]).count("Vehicle horn") >= 1  # the bundle's classes reach the event


def test_a_window_runs_in_one_invoke(small_bundles: dict[str, Path], shared: Path) -> None:
    bundle = load_bundle(small_bundles["dynamic"])
    assert bundle.backbone_model.input.shape == (-1, 96, 64)  # "any batch" in the manifest
    assert bundle.backbone_model.output.shape == (-1, 128)
    batched, per_patch = Model(bundle), Model(bundle, batched=False)
    assert batched.backbone.batched and not per_patch.backbone.batched
    assert batched.backbone.input_signature == (-1, 96, 64)
    audio, _ = soundfile.read(clip_paths(shared, per_class=1)[2], dtype="float32")
    # a full window, a shorter one (another patch count: the input is resized) and the full one again
    for waveform in (audio[:160000], audio[:80000], audio[:160000]):
        ours, _, _ = batched.backbone_outputs(waveform)
        before, _, _ = per_patch.backbone_outputs(waveform)
        assert len(ours) == len(waveform) // 15360 and batched.backbone._rows == len(ours)
        np.testing.assert_allclose(ours, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
        np.testing.assert_allclose(batched.scores(waveform).scores, per_patch.scores(waveform).scores, atol=1e-5)


def test_bundle_from_before_the_batch_export_still_loads(
    small_bundles: dict[str, Path], small_checkpoint: Path, shared: Path, tmp_path: Path
) -> None:
    """A bundle whose backbone has a fixed [1, 96, 64] input (as written before) loads and runs one patch per
    invoke, with the same scores as the new export of the same weights."""
    from custom.convert.tflite.export import export_tflite
    from custom.daemon.model.bundle import BundleDraft, ModelSpec, TensorSpec, write_bundle

    new = load_bundle(small_bundles["float32"])
    fixed = tmp_path / "vggish.tflite"
    fixed.write_bytes(export_tflite(build_keras(read_checkpoint(small_checkpoint, SMALL), SMALL), (1, 96, 64)))
    spec = ModelSpec(
        file="vggish.tflite", input=TensorSpec((1, 96, 64), "float32"), output=TensorSpec((1, 128), "float32")
    )
    sources = {name: new.file_path(name) for name in new.files}
    old = write_bundle(
        BundleDraft(
            bundle_id="old",
            version="0",
            backbone="vggish",
            frontend=new.frontend,
            backbone_model=spec,
            classifier_model=new.classifier_model,
            postprocess=dict(new.postprocess),
            classes=list(new.classes),
            sources={**sources, "vggish.tflite": fixed},
        ),
        tmp_path / "old",
    )
    model = Model(old)
    assert not model.backbone.batched and model.backbone.input_signature == (1, 96, 64)
    audio, _ = soundfile.read(clip_paths(shared, per_class=1)[0], dtype="float32")
    np.testing.assert_allclose(model.scores(audio).scores, Model(new).scores(audio).scores, atol=1e-5)
    # a manifest that promises "any batch" for this fixed model is refused, naming the tensor
    with pytest.raises(BundleError, match=r"input tensor is float32\[1, 96, 64\], manifest says float32\[-1, 96, 64\]"):
        Model(replace(old, backbone_model=replace(spec, input=TensorSpec((-1, 96, 64), "float32"))))


@pytest.fixture(scope="module")
def tflite214_python() -> str:
    """The numpy<2 venv's python; a missing venv fails (never skips): 2.14 is what many Pi images still run."""
    python = os.environ.get(TFLITE214_ENV)
    if not python:
        pytest.fail(f"{TFLITE214_ENV} is not set; create the tflite-runtime 2.14 venv: {TFLITE214_HOWTO}")
    return python


def test_every_model_runs_in_tflite_runtime_214(
    tflite214_python: str,
    small_bundles: dict[str, Path],
    real_patches: np.ndarray,
    small_reference: np.ndarray,
    tmp_path: Path,
) -> None:
    python = tflite214_python
    inputs = tmp_path / "patches.npy"
    np.save(inputs, real_patches[:12])
    models = [small_bundles[m] / vggish.BACKBONE_FILE for m in QUANTIZE_MODES]
    linked = []
    for mode, model in zip(QUANTIZE_MODES, models, strict=True):
        link = tmp_path / f"{mode}.tflite"
        link.symlink_to(model)
        linked.append(str(link))
    script = Path(__file__).with_name("tflite214_check.py")
    done = subprocess.run(
        [python, str(script), str(inputs), str(tmp_path / "out"), *linked], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["runtime"] for r in reports] == ["tflite_runtime 2.14.0"] * len(QUANTIZE_MODES)
    for mode in QUANTIZE_MODES:
        theirs = np.load(tmp_path / "out" / f"{mode}.npy")
        ours, _ = vggish.tflite_embeddings(small_bundles[mode] / vggish.BACKBONE_FILE, real_patches[:12], threads=1)
        # int8 kernels may round an output one quantization step differently between runtimes: compare both with
        # the float reference, and with each other at the same bar
        assert cosine(theirs, small_reference[:12]).min() >= MIN_COSINE, mode
        assert cosine(theirs, ours).min() >= MIN_COSINE, mode
        # the daemon's way: all 12 patches in one invoke, the input resized to [12, 96, 64], in 2.14 as well
        batched = np.load(tmp_path / "out" / f"{mode}.batched.npy")
        assert cosine(batched, small_reference[:12]).min() >= MIN_COSINE, mode
    assert all(r["batched"] for r in reports)
    # the classifier goes to the Pi too: feed it PCA'd uint8 embeddings as the daemon does
    classifier = small_bundles["float32"] / "classifier.tflite"
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 10, 128)).astype(np.float32)
    np.save(tmp_path / "frames.npy", frames)
    done = subprocess.run(
        [python, str(script), str(tmp_path / "frames.npy"), str(tmp_path / "cls"), str(classifier)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    interpreter = load_interpreter(classifier)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    for frame, theirs in zip(frames, np.load(tmp_path / "cls" / "classifier.npy"), strict=True):
        interpreter.set_tensor(inp["index"], frame[None].astype(inp["dtype"]))
        interpreter.invoke()
        np.testing.assert_allclose(theirs, interpreter.get_tensor(out["index"]).reshape(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "fault,message",
    [
        ("missing", "variable vggish/fc1/fc1_2/weights missing"),
        ("misshaped", r"variable vggish/conv3/conv3_1/biases has shape \[255\], VGGish needs \[32\]"),
    ],
)
def test_bad_checkpoint_names_the_variable(tmp_path: Path, fault: str, message: str) -> None:
    weights = random_weights(SMALL)
    if fault == "missing":
        del weights["vggish/fc1/fc1_2/weights"]
    else:
        weights["vggish/conv3/conv3_1/biases"] = np.zeros(255, np.float32)
    path = write_checkpoint(tmp_path / "bad.ckpt", weights)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path, SMALL)


def test_extra_variables_are_ignored(tmp_path: Path, small_checkpoint: Path) -> None:
    weights = random_weights(SMALL, seed=1)
    extra = {"global_step": np.array(7, np.int64), "vggish/classifier/weights": np.ones((128, 5), np.float32)}
    path = write_checkpoint(tmp_path / "extra.ckpt", weights, extra)
    ours = read_checkpoint(path, SMALL)
    assert sorted(ours) == sorted(expected_variables(SMALL))
    np.testing.assert_array_equal(ours["vggish/fc2/weights"], weights["vggish/fc2/weights"])


def test_command_line_errors(tmp_path: Path, small_checkpoint: Path, pca_file: Path, classifier_dir: Path, capsys):
    from custom.convert.cli import main

    base = ["vggish", "--pca", str(pca_file), "--classifier", str(classifier_dir), "--out", str(tmp_path / "b")]
    # the official-size converter refuses a narrow checkpoint, naming the first variable that differs
    assert main([*base, "--checkpoint", str(small_checkpoint)]) == exitcodes.CONFIG
    assert "vggish/conv1/weights has shape [3, 3, 1, 8], VGGish needs [3, 3, 1, 64]" in capsys.readouterr().out
    assert main([*base, "--checkpoint", str(tmp_path / "nope.ckpt")]) == exitcodes.NO_INPUT
    assert "nope.ckpt: no such file" in capsys.readouterr().out
    assert main([*base, "--checkpoint", str(small_checkpoint), "--quantize", "int8"]) == exitcodes.NO_INPUT
    assert "needs --calibration-audio" in capsys.readouterr().out
    meta = json.loads((classifier_dir / "classifier.json").read_text())
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "classifier.tflite").write_bytes((classifier_dir / "classifier.tflite").read_bytes())
    (wrong / "classifier.json").write_text(json.dumps({**meta, "classes": meta["classes"][::-1]}))
    base[4] = str(wrong)
    assert main([*base, "--checkpoint", str(small_checkpoint)]) == exitcodes.NO_INPUT
    assert "differ from the sensor's" in capsys.readouterr().out
    assert not (tmp_path / "b").exists()


def test_broken_classifier_never_replaces_a_bundle(
    tmp_path: Path, small_checkpoint: Path, pca_file: Path, classifier_dir: Path, capsys
) -> None:
    out = tmp_path / "bundle"
    args = convert_args(small_checkpoint, pca_file, classifier_dir / "classifier.tflite", out, quantize="float32")
    assert vggish.build(args, SMALL) == exitcodes.OK
    before = load_bundle(out).sha256
    broken = write_classifier(tmp_path / "broken", broken=True)
    args = convert_args(small_checkpoint, pca_file, broken, out, quantize="float32")
    assert vggish.build(args, SMALL) == exitcodes.CONFIG
    assert "scores NaN/inf" in capsys.readouterr().out
    assert load_bundle(out).sha256 == before


def _full_size_conversion(
    tmp_path: Path, modes: tuple[str, ...], pca_file: Path, classifier_dir: Path, clips_dir: Path, shared: Path
) -> None:
    """Write a 72 M-parameter checkpoint, convert it with the real command, compare with the TF1 reference."""
    from custom.convert.cli import main

    checkpoint = write_checkpoint(tmp_path / "vggish_model.ckpt", random_weights(OFFICIAL, seed=2))
    patches = clip_patches(clip_paths(shared, per_class=1)[:4])
    reference = reference_embeddings(checkpoint, patches, OFFICIAL)
    for mode in modes:
        out = tmp_path / mode
        argv = ["vggish", "--checkpoint", str(checkpoint), "--pca", str(pca_file), "--classifier", str(classifier_dir)]
        argv += ["--out", str(out), "--quantize", mode, "--calibration-audio", str(clips_dir)]
        assert main([*argv, "--calibration-patches", "60"]) == exitcodes.OK
        bundle = load_bundle(out)
        assert bundle.provenance["parameters"] == 72_141_184
        got, _ = vggish.tflite_embeddings(out / vggish.BACKBONE_FILE, patches, threads=2)
        similarity = cosine(got, reference)
        if mode == "int8":
            # full int8 on a random full-size net measured min 0.99896 / mean 0.9994 over 80 real patches: the
            # worst patch sits at the bar, so int8 is held to it on average (and is not the default mode)
            assert similarity.mean() >= MIN_COSINE and similarity.min() >= 0.998, similarity.min()
        else:
            assert similarity.min() >= MIN_COSINE, (mode, similarity.min())
        # the postprocess runs on these embeddings (random weights put them far outside AudioSet's PCA range,
        # so the uint8 values are not compared here; the real model's are, by the converter's self-check)
        assert AudioSetPCA.load(out / "vggish_pca_params.npz")(got).shape == (len(got), 128)


@pytest.mark.slow  # ~1-4 min and ~7 GB RAM per mode: run with `pytest -m slow`, not on every CI run
def test_full_size_checkpoint_default_mode(tmp_path, pca_file, classifier_dir, clips_dir, shared) -> None:
    _full_size_conversion(tmp_path, (vggish.DEFAULT_MODE,), pca_file, classifier_dir, clips_dir, shared)


@pytest.mark.slow
def test_full_size_checkpoint_every_mode(tmp_path, pca_file, classifier_dir, clips_dir, shared) -> None:
    modes = tuple(m for m in QUANTIZE_MODES if m != vggish.DEFAULT_MODE)
    _full_size_conversion(tmp_path, modes, pca_file, classifier_dir, clips_dir, shared)
