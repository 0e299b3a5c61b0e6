"""`custom-convert evaluate`: every report figure against a hand computation on a six-clip fixture, the bundle
path through the daemon's own loader, and the logistic-regression baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from custom.convert.classes import URBAN_CLASSES
from custom.convert.evaluate import classifier as evaluate
from custom.convert.vggish_classifier.audioset import ClipSet

NAMES = [c.name for c in URBAN_CLASSES]
DOG, SIREN, BIRD = NAMES.index("Dog"), NAMES.index("Siren"), NAMES.index("Bird")


def tiny_clips(labels: np.ndarray) -> ClipSet:
    n = len(labels)
    return ClipSet(
        video_id=np.array([f"v{i}" for i in range(n)]),
        start_time=np.zeros(n, np.float32),
        embeddings=np.ones((n, 10, 128), np.uint8),
        n_frames=np.full(n, 10, np.int16),
        labels=labels.astype(np.uint8),
        all_labels=np.full((n, 1), -1, np.int16),
        class_names=tuple(NAMES),
        source={"path": "tiny", "sha256": "0" * 64},
    )


@pytest.fixture
def fixture() -> tuple[ClipSet, np.ndarray, np.ndarray]:
    """Six clips: dog, dog, bird, dog+siren, other, other; scores only on Dog/Siren/Bird."""
    labels = np.zeros((6, 10))
    labels[[0, 1, 3], DOG] = 1
    labels[2, BIRD] = 1
    labels[3, SIREN] = 1
    scores = np.zeros((6, 10))
    scores[:, DOG] = [0.9, 0.3, 0.4, 0.7, 0.5, 0.0]
    scores[:, SIREN] = [0.0, 0.0, 0.0, 0.5, 0.0, 0.6]
    scores[:, BIRD] = [0.2, 0.6, 0.8, 0.0, 0.0, 0.1]
    thresholds = np.full(10, 0.5)
    thresholds[SIREN] = 0.65
    return tiny_clips(labels), scores, thresholds


def test_report_numbers_match_a_hand_computation(fixture: tuple[ClipSet, np.ndarray, np.ndarray]) -> None:
    clips, scores, thresholds = fixture
    m = evaluate.build_report(clips, scores, thresholds)["metrics"]
    # Dog: ranked c0(+) c3(+) c4 c2 c1(+) c5 -> precision at each positive 1/1, 2/2, 3/5
    assert m["per_class_ap"]["Dog"] == pytest.approx((1 + 1 + 3 / 5) / 3, abs=1e-4)
    # Siren: c5 (0.6, other) ranks above the positive c3 (0.5) -> 1/2
    assert m["per_class_ap"]["Siren"] == pytest.approx(0.5)
    assert m["per_class_ap"]["Bird"] == pytest.approx(1.0)
    assert m["per_class_ap"]["Jackhammer"] is None  # no positive: left out of the mean
    assert m["macro_ap"] == pytest.approx((13 / 15 + 0.5 + 1.0) / 3, abs=1e-4)
    # single-label clips c0 (dog->dog), c1 (dog->bird), c2 (bird->bird)
    assert m["single_label_clips"] == 3
    assert m["top1_single_label"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["dogs_taken_for_birds"] == pytest.approx(0.5)
    assert m["confusion"][DOG][DOG] == 1 and m["confusion"][DOG][BIRD] == 1 and m["confusion"][BIRD][BIRD] == 1
    assert sum(map(sum, m["confusion"])) == 3
    # at the thresholds: Dog fires on c0, c3, c4; Bird on c1, c2; Siren (0.65) nowhere
    dog, siren, bird = (m["per_class"][n] for n in ("Dog", "Siren", "Bird"))
    assert (dog["precision"], dog["recall"]) == pytest.approx((2 / 3, 2 / 3), abs=1e-4)
    assert siren["precision"] is None and siren["recall"] == 0.0
    assert (bird["precision"], bird["recall"]) == (0.5, 1.0)
    # 'other' clips c4 (Dog 0.5 fires) and c5 (Siren 0.6 < 0.65: silent)
    assert m["other_clips"] == 2
    assert m["other_false_alarm_rate"] == 0.5
    assert dog["other_false_alarm_rate"] == 0.5 and siren["other_false_alarm_rate"] == 0.0
    assert dog["positives"] == 3 and dog["threshold"] == 0.5


def test_targets_and_markdown(fixture: tuple[ClipSet, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    clips, scores, thresholds = fixture
    baseline = {"model": "hand", "data": {"path": "x"}, "scores": scores[:, ::-1].copy()}
    report = evaluate.build_report(clips, scores, thresholds, baseline)
    targets = report["targets"]
    assert not targets["top1_single_label"]["met"] and targets["top1_single_label"]["target"] == ">= 0.85"
    assert not targets["other_false_alarm_rate"]["met"]
    assert report["baseline"]["metrics"]["single_label_clips"] == 3
    evaluate.write_report(report, tmp_path)
    text = (tmp_path / "REPORT.md").read_text()
    assert "| top-1, single-label clips | 0.667 |" in text
    assert "| Dog | 3 | 0.867 |" in text
    assert json.loads((tmp_path / "report.json").read_text())["metrics"]["macro_ap"] == report["metrics"]["macro_ap"]
    assert (tmp_path / "confusion.png").is_file() and (tmp_path / "ap.png").is_file()


def test_pooled_mean_max_ignores_padding() -> None:
    emb = np.zeros((1, 10, 128), np.uint8)
    emb[0, :2] = [[255] * 128, [0] * 127 + [51]]  # second frame is real (one non-zero value)
    pooled = evaluate.pooled_mean_max(emb)
    assert pooled.shape == (1, 256)
    assert pooled[0, 0] == pytest.approx((2.0 + -2.0) / 2)  # mean over two real frames of 255 -> 2, 0 -> -2
    assert pooled[0, 128] == pytest.approx(2.0)


def test_logistic_baseline_learns_a_separable_toy() -> None:
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(0)
    labels = np.zeros((200, 10))
    labels[np.arange(200), rng.integers(0, 10, 200)] = 1
    emb = rng.integers(1, 60, size=(200, 10, 128)).astype(np.uint8)
    emb[:, :, :10] += (labels[:, None, :] * 150).astype(np.uint8)  # class c lifts dimension c
    clips = tiny_clips(labels)
    clips.embeddings = emb
    scores = evaluate.logistic_baseline(clips, emb)
    assert (scores.argmax(axis=1) == labels.argmax(axis=1)).mean() > 0.95


@pytest.mark.tf
def test_evaluate_a_bundle_through_the_daemon_loader(shared: Path, tmp_path: Path) -> None:
    """--bundle takes the classifier and thresholds from the manifest and scores with the TFLite runtime."""
    pytest.importorskip("tensorflow")
    from custom.convert.cli import main as convert
    from custom.daemon.model.bundle import BundleDraft, ClassSpec, ModelSpec, TensorSpec, write_bundle
    from custom.daemon.model.frontend import VGGISH
    from testing.vggish import write_classifier

    clf_dir = tmp_path / "clf"
    write_classifier(clf_dir)
    meta = json.loads((clf_dir / "classifier.json").read_text())
    np.savez(tmp_path / "pca.npz", pca_means=np.zeros(128), pca_eigen_vectors=np.eye(128))
    spec = ModelSpec(
        file="classifier.tflite",
        input=TensorSpec(tuple(meta["input"]["shape"]), meta["input"]["dtype"]),
        output=TensorSpec(tuple(meta["output"]["shape"]), meta["output"]["dtype"]),
    )
    thresholds = [0.3 + 0.01 * k for k in range(10)]
    draft = BundleDraft(
        bundle_id="test",
        version="0",
        backbone="vggish",
        frontend=VGGISH,
        backbone_model=ModelSpec(
            file="backbone.tflite", input=TensorSpec((1, 96, 64), "float32"), output=TensorSpec((1, 128), "float32")
        ),
        classifier_model=spec,
        postprocess={"kind": "audioset_pca", "file": "pca.npz"},
        classes=[ClassSpec(c.name, c.audioset_name, c.mid, t) for c, t in zip(URBAN_CLASSES, thresholds, strict=True)],
        sources={
            "backbone.tflite": clf_dir / "classifier.tflite",  # never run here: evaluate uses the classifier only
            "classifier.tflite": clf_dir / "classifier.tflite",
            "pca.npz": tmp_path / "pca.npz",
        },
    )
    bundle = write_bundle(draft, tmp_path / "bundle")
    eval_npz = shared / "data/audioset/eval.npz"
    small = tmp_path / "data" / "eval.npz"
    small.parent.mkdir()
    with np.load(eval_npz) as raw:
        rows = np.r_[0:40, len(raw["video_id"]) - 40 : len(raw["video_id"])]  # positives and 'other' clips
        np.savez(small, **{k: raw[k][rows] if raw[k].shape[:1] == raw["video_id"].shape else raw[k] for k in raw.files})
    for name in ("ontology.json", "class_labels_indices.csv"):
        (small.parent / name).symlink_to(shared / "data/audioset" / name)
    status = convert(
        ["evaluate", "--bundle", str(bundle.path), "--data", str(small), "--report", str(tmp_path / "r"),
         "--no-baseline"]
    )  # fmt: skip
    assert status == 0
    report = json.loads((tmp_path / "r/report.json").read_text())
    assert report["classifier"]["bundle_sha256"] == bundle.sha256
    assert [report["metrics"]["per_class"][n]["threshold"] for n in NAMES] == pytest.approx(thresholds)
    assert report["data"]["clips"] == 80
