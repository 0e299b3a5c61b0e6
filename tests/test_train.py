"""`custom-convert train` and the AudioSet loader: a small configuration trained on the real bal_train, scored on
the real eval split through the TFLite runtime, plus the loader's ontology relabelling and tfrecord reading."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from custom.convert.classes import URBAN_CLASSES
from custom.convert.cli import main as convert
from custom.convert.vggish_classifier import audioset
from custom.convert.vggish_classifier.train import TFLITE_TOLERANCE
from custom.daemon.model.runtime import load_interpreter

pytestmark = pytest.mark.tf
pytest.importorskip("tensorflow")

QUICK = ["--model", "linear", "--epochs", "4", "--folds", "2", "--threads", "2"]  # seconds, not minutes


@pytest.fixture(scope="module")
def audioset_dir(shared: Path) -> Path:
    return shared / "data" / "audioset"


@pytest.fixture(scope="module")
def quick_classifier(audioset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("classifier")
    assert convert(["train", "--data", str(audioset_dir / "bal_train.npz"), "--out", str(out), *QUICK]) == 0
    return out


def label_index(audioset_dir: Path, display_name: str) -> int:
    with open(audioset_dir / "class_labels_indices.csv", newline="") as handle:
        return next(int(r["index"]) for r in csv.DictReader(handle) if r["display_name"] == display_name)


def test_output_folder_is_the_documented_contract(quick_classifier: Path, audioset_dir: Path) -> None:
    meta = json.loads((quick_classifier / "classifier.json").read_text())
    assert meta["classes"] == [c.name for c in URBAN_CLASSES]
    assert meta["mids"] == [c.mid for c in URBAN_CLASSES]
    assert len(meta["thresholds"]) == 10 and all(0.0 < t < 1.0 for t in meta["thresholds"])
    assert meta["input"]["shape"] == [1, 10, 128] and meta["output"]["shape"] == [1, 10]
    assert meta["data"]["sha256"] == audioset.sha256_of(audioset_dir / "bal_train.npz")
    assert meta["validation"]["grouped_by"] == "video_id"
    # the shipped head is dynamic-range quantized (int8 weights); its scores stay within the stated tolerance
    assert meta["quantize"] == "dynamic"
    assert meta["tflite_check"]["max_abs_diff"] < TFLITE_TOLERANCE["dynamic"]
    # the VGGish converter reads this folder as it is
    from custom.convert.vggish_classifier.artifact import read_classifier

    classifier = read_classifier(quick_classifier)
    assert classifier.thresholds == tuple(meta["thresholds"])

    interpreter = load_interpreter(quick_classifier / "classifier.tflite")
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(inp["shape"]) == [1, 10, 128] and np.dtype(inp["dtype"]) == np.float32
    assert list(out["shape"]) == [1, 10]


def test_quick_classifier_beats_chance_widely_on_eval(quick_classifier: Path, audioset_dir: Path) -> None:
    report_dir = quick_classifier / "report"
    status = convert(
        ["evaluate", "--classifier", str(quick_classifier), "--data", str(audioset_dir / "eval.npz"),
         "--report", str(report_dir), "--no-baseline"]
    )  # fmt: skip
    assert status == 0
    report = json.loads((report_dir / "report.json").read_text())
    m = report["metrics"]
    prevalence = np.mean([pc["positives"] for pc in m["per_class"].values()]) / report["data"]["clips"]
    assert m["macro_ap"] > 8 * prevalence  # chance AP is the prevalence, ~0.03 here
    assert m["top1_single_label"] > 0.6  # chance is 0.1
    assert m["other_false_alarm_rate"] < 0.5
    assert (report_dir / "REPORT.md").read_text().startswith("# Classifier evaluation")
    assert (report_dir / "confusion.png").stat().st_size > 1000


def test_scores_do_not_depend_on_padding_content(quick_classifier: Path, audioset_dir: Path) -> None:
    """A clip's padding frames are masked: its score equals the same frames with the padding left at zero."""
    clips = audioset.load_clips(audioset_dir / "eval.npz")
    short = np.flatnonzero(clips.n_frames < 10)[:5]
    interpreter = load_interpreter(quick_classifier / "classifier.tflite")
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def score(window: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], window[None].astype(np.float32))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])[0].copy()

    for row in short:
        window = clips.embeddings[row]
        n = int(clips.n_frames[row])
        repeated = window.copy()
        repeated[n:] = 0
        assert np.allclose(score(window), score(repeated))
        assert np.all(np.isfinite(score(window)))


def test_training_is_deterministic(audioset_dir: Path, tmp_path: Path) -> None:
    from custom.convert.vggish_classifier.train import Hyper, train

    clips = audioset.load_clips(audioset_dir / "bal_train.npz")
    clips = clips.subset(np.arange(0, len(clips), 4))
    hyper = Hyper(model="mlp", epochs=2, folds=2, width=16)
    first = train(clips, tmp_path / "a", hyper, seed=3)
    second = train(clips, tmp_path / "b", hyper, seed=3)
    assert (tmp_path / "a/classifier.tflite").read_bytes() == (tmp_path / "b/classifier.tflite").read_bytes()
    assert first["thresholds"] == second["thresholds"]


def test_classifier_runs_in_tflite_runtime_214(quick_classifier: Path, tmp_path: Path) -> None:
    python = os.environ.get("CUSTOM_TFLITE214_PYTHON")
    if not python:
        pytest.fail("CUSTOM_TFLITE214_PYTHON is not set: tests/run.sh creates the tflite-runtime 2.14 venv")
    frames = np.random.default_rng(0).integers(0, 256, size=(4, 10, 128)).astype(np.float32)
    frames[0, 7:] = 0  # a padded clip
    np.save(tmp_path / "frames.npy", frames)
    script = Path(__file__).with_name("tflite214_check.py")
    model = quick_classifier / "classifier.tflite"
    done = subprocess.run(
        [python, str(script), str(tmp_path / "frames.npy"), str(tmp_path / "out"), str(model)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.load(tmp_path / "out" / "classifier.npy")
    interpreter = load_interpreter(model)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    for window, their in zip(frames, theirs, strict=True):
        interpreter.set_tensor(inp["index"], window[None])
        interpreter.invoke()
        assert np.allclose(interpreter.get_tensor(out["index"])[0], their, atol=1e-5)


def test_npz_labels_take_ontology_descendants(audioset_dir: Path) -> None:
    clips = audioset.load_clips(audioset_dir / "bal_train.npz")
    with np.load(audioset_dir / "bal_train.npz") as raw:
        exact = raw["labels"]
    assert np.all(clips.labels >= exact)  # nothing lost
    bark = label_index(audioset_dir, "Bark")
    barking_others = np.flatnonzero((exact.sum(axis=1) == 0) & (clips.all_labels == bark).any(axis=1))
    assert len(barking_others) > 0
    dog = [c.name for c in URBAN_CLASSES].index("Dog")
    assert np.all(clips.labels[barking_others, dog] == 1)
    assert clips.source["relabelled"] == int((clips.labels > exact).sum()) > 0


def test_tfrecord_folder_reads_like_the_npz(audioset_dir: Path, tmp_path: Path) -> None:
    bark, speech, siren = (label_index(audioset_dir, n) for n in ("Bark", "Speech", "Siren"))
    rng = np.random.default_rng(0)
    frames = lambda n: rng.integers(1, 256, size=(n, 128)).astype(np.uint8)  # noqa: E731
    records = [
        ("dogvideo001", 30.0, [speech, bark], frames(10)),
        ("sirenvideo1", 0.0, [siren], frames(7)),  # short clip: zero-padded to 10 frames
        *[(f"other{i:06d}", 0.0, [speech], frames(10)) for i in range(6)],
    ]
    folder = tmp_path / "eval"
    (folder / "sub").mkdir(parents=True)
    audioset.write_tfrecord(folder / "a.tfrecord", records[:3])
    audioset.write_tfrecord(folder / "sub" / "b.tfrecord", records[3:])
    kwargs = {"ontology": audioset_dir / "ontology.json", "label_index": audioset_dir / "class_labels_indices.csv"}

    clips = audioset.load_clips(folder, **kwargs)
    names = [c.name for c in URBAN_CLASSES]
    assert len(clips) == 8 and clips.source["kind"] == "tfrecord"
    assert list(clips.video_id[:2]) == ["dogvideo001", "sirenvideo1"]
    assert clips.labels[0, names.index("Dog")] == 1 and clips.labels[0].sum() == 1
    assert clips.labels[1, names.index("Siren")] == 1
    assert clips.is_other.sum() == 6
    assert clips.n_frames[1] == 7 and not clips.embeddings[1, 7:].any()
    assert np.array_equal(clips.embeddings[0], records[0][3])
    assert clips.frame_mask[1].sum() == 7

    capped = audioset.load_clips(folder, max_negatives=2, seed=1, **kwargs)
    assert len(capped) == 4 and capped.is_other.sum() == 2
    again = audioset.load_clips(folder, max_negatives=2, seed=1, **kwargs)
    assert list(again.video_id) == list(capped.video_id)


def test_missing_metadata_names_the_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", embeddings=np.zeros((1, 10, 128), np.uint8))
    with pytest.raises(FileNotFoundError, match="ontology.json"):
        audioset.load_clips(tmp_path / "x.npz")
    assert convert(["train", "--data", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o")]) == 66
