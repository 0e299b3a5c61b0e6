"""Score the shipped classifier on AudioSet embeddings (the official eval split) and write a report.

    custom-convert evaluate --bundle BUNDLE_DIR --data ../shared/data/audioset/eval.npz [--report DIR]
    custom-convert evaluate --classifier out/classifier --data ../shared/data/audioset/eval.npz

The classifier runs on the TFLite runtime the sensor uses (custom.daemon.model.runtime.RowRunner), one window per
invoke, so the figures are those of the file that ships. Thresholds come from the bundle manifest (--bundle) or from
classifier.json beside the model (--classifier). Labels include ontology descendants ("Bark" counts as Dog), as in
training; clips with none of our classes are "other".

The report (REPORT.md, report.json, confusion.png, ap.png in --report, default: beside the classifier):

* top-1 accuracy on the clips with exactly one of our labels (the seed's metric) and the confusion matrix there;
* "dogs taken for birds": single-label Dog clips whose top class is Bird, as a share of those Dog clips;
* per-class average precision over all clips ("other" included) and their mean (macro AP);
* per-class precision and recall when a class is reported at score >= its shipped threshold;
* false-alarm rate: the share of "other" clips on which any class reaches its threshold (and per class);
* a logistic-regression baseline (per class, on standardised mean+max pooled frames, class-balanced, C=0.01)
  trained in the same run on --baseline-data (default: bal_train.npz beside --data) and scored the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.model.audioset_params import DEQUANT_OFFSET, DEQUANT_SCALE
from custom.wire import exitcodes

from ..classes import URBAN_CLASSES
from ..vggish_classifier.audioset import ClipSet, load_clips, sha256_of
from .metrics import confusion_matrix, per_class_ap, precision_recall_at

log = logging.getLogger(__name__)

HELP = "evaluate a classifier (bundle or classifier.tflite) on AudioSet embeddings: AP, top-1, thresholds, report"
SEED_FIGURES = {
    "attention MLP, top-1 on its own split (balanced + unbalanced AudioSet)": 0.82,
    "logistic regression / SVC, top-1": 0.756,
}
TARGETS = {  # metric -> (comparison, value), from issue 6
    "top1_single_label": (">=", 0.85),
    "macro_ap": (">=", 0.70),
    "dogs_taken_for_birds": ("<=", 0.05),
    "other_false_alarm_rate": ("<=", 0.10),
}
BASELINE_C = 0.01  # best of 0.01/0.1/1 in 5-fold grouped validation on bal_train
BASELINE_MODEL = f"logistic regression per class on standardised mean+max pooled frames, balanced, C={BASELINE_C}"
DOG, BIRD = "Dog", "Bird"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--bundle", type=Path, help="bundle folder: its classifier model and thresholds are evaluated")
    which.add_argument("--classifier", type=Path, help="classifier.tflite or its folder (with classifier.json)")
    parser.add_argument("--data", type=Path, required=True, help="eval.npz or a folder of AudioSet eval tfrecords")
    parser.add_argument("--report", type=Path, help="report folder (default: beside the classifier)")
    parser.add_argument(
        "--baseline-data", type=Path, help="training data for the LR baseline (default: bal_train.npz beside --data)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the logistic-regression baseline")
    parser.add_argument("--ontology", type=Path, help="ontology.json (default: beside --data)")
    parser.add_argument("--label-index", type=Path, help="class_labels_indices.csv (default: beside --data)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", action="append", default=[], help="a line for the report's Notes (repeatable)")


def run(args: argparse.Namespace) -> int:
    try:
        tflite, thresholds, describe = _classifier(args.bundle, args.classifier)
    except (ValueError, OSError) as exc:
        print(f"custom-convert evaluate: {exc}")
        return exitcodes.CONFIG
    try:
        clips = load_clips(args.data, ontology=args.ontology, label_index=args.label_index)
    except (OSError, ValueError) as exc:
        print(f"custom-convert evaluate: {exc}")
        return exitcodes.NO_INPUT
    scores = tflite_scores(tflite, clips.embeddings, threads=args.threads)
    baseline = None
    if not args.no_baseline:
        train_path = args.baseline_data or args.data.with_name("bal_train.npz")
        if train_path.exists() and train_path.resolve() != args.data.resolve():
            train = load_clips(train_path, ontology=args.ontology, label_index=args.label_index)
            baseline = {
                "data": {"path": str(train_path), "sha256": train.source["sha256"]},
                "model": BASELINE_MODEL,
                "scores": logistic_baseline(train, clips.embeddings),
            }
        else:
            log.warning("no baseline: %s not found (pass --baseline-data or --no-baseline)", train_path)
    report = build_report(clips, scores, thresholds, baseline)
    report["classifier"] = describe
    report["notes"] = list(args.note)
    out = args.report or tflite.parent
    write_report(report, out, scores=scores, labels=clips.labels, baseline=baseline)
    m = report["metrics"]
    print(
        f"top-1 {_f(m['top1_single_label'])}, macro AP {_f(m['macro_ap'])}, "
        f"dogs->birds {_f(m['dogs_taken_for_birds'])}, other false alarms {_f(m['other_false_alarm_rate'])}; "
        f"report in {out}"
    )
    return exitcodes.OK


def _classifier(bundle_dir: Path | None, classifier_path: Path | None) -> tuple[Path, np.ndarray, dict[str, Any]]:
    """(tflite path, thresholds, description) from a bundle folder or a `train` output (exactly one given)."""
    expected = [c.name for c in URBAN_CLASSES]
    if bundle_dir is not None:
        from custom.daemon.model.bundle import load_bundle

        bundle = load_bundle(bundle_dir)
        if bundle.classifier_model is None:
            raise ValueError(f"{bundle_dir}: a {bundle.backbone} bundle has no classifier model to evaluate")
        if list(bundle.class_names) != expected:
            raise ValueError(f"{bundle_dir}: classes {list(bundle.class_names)} are not {expected}")
        path = bundle.file_path(bundle.classifier_model.file)
        describe = {
            "bundle": str(bundle.path),
            "bundle_id": bundle.bundle_id,
            "bundle_sha256": bundle.sha256,
            "file": bundle.classifier_model.file,
        }
        meta = bundle.provenance.get("classifier", {})
        thresholds = np.asarray(bundle.thresholds, dtype=np.float64)
    else:
        from ..vggish_classifier.artifact import read_classifier

        assert classifier_path is not None
        classifier = read_classifier(classifier_path)
        path = classifier.path
        describe = {"file": str(path)}
        meta = classifier.meta
        thresholds = np.asarray(classifier.thresholds, dtype=np.float64)
    # what training recorded (classifier.json, or its copy in the bundle's provenance)
    for key in ("model", "seed", "threshold_rule", "validation", "model_selection", "training_seconds"):
        if key in meta:
            describe[key] = meta[key]
    if isinstance(meta.get("data"), dict):
        describe["training_data"] = {k: meta["data"].get(k) for k in ("path", "sha256", "clips")}
    describe["sha256"] = sha256_of(path)
    describe["thresholds"] = {n: float(t) for n, t in zip(expected, thresholds, strict=True)}
    return path, thresholds, describe


def tflite_scores(path: Path, embeddings: np.ndarray, threads: int = 1) -> np.ndarray:
    """[N, classes] scores from the .tflite on the sensor's runtime and row runner, one [1,10,128] window per
    invoke as on the sensor."""
    from custom.daemon.model.runtime import RowRunner

    return RowRunner(path, threads=threads)(embeddings).astype(np.float64)


def pooled_mean_max(embeddings: np.ndarray) -> np.ndarray:
    """[N, 256]: mean and max over the real frames of the de-quantised embeddings."""
    x = embeddings.astype(np.float64) * DEQUANT_SCALE + DEQUANT_OFFSET
    real = (embeddings.max(axis=2) > 0)[:, :, None]
    mean = (x * real).sum(axis=1) / np.maximum(real.sum(axis=1), 1)
    top = np.where(real, x, -np.inf).max(axis=1)
    return np.concatenate([mean, top], axis=1)


def logistic_baseline(train: ClipSet, embeddings: np.ndarray) -> np.ndarray:
    """The plain baseline: per-class logistic regression on mean+max pooled frames; [N, classes] scores."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(pooled_mean_max(train.embeddings))
    x_train = scaler.transform(pooled_mean_max(train.embeddings))
    x_eval = scaler.transform(pooled_mean_max(embeddings))
    scores = np.zeros((len(embeddings), train.labels.shape[1]))
    for c in range(train.labels.shape[1]):
        model = LogisticRegression(C=BASELINE_C, class_weight="balanced", max_iter=2000)
        scores[:, c] = model.fit(x_train, train.labels[:, c]).predict_proba(x_eval)[:, 1]
    return scores


def _r(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 4)


def score_metrics(labels: np.ndarray, scores: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Threshold-free metrics: AP per class and macro, top-1 and confusion on single-label clips, dogs->birds."""
    aps = per_class_ap(labels, scores)
    single = labels.sum(axis=1) == 1
    truth = labels[single].argmax(axis=1)
    predicted = scores[single].argmax(axis=1)
    dog, bird = names.index(DOG), names.index(BIRD)
    dogs = truth == dog
    return {
        "top1_single_label": _r((predicted == truth).mean()) if single.any() else None,
        "single_label_clips": int(single.sum()),
        "macro_ap": _r(np.nanmean(aps)),
        "per_class_ap": {n: _r(a) for n, a in zip(names, aps, strict=True)},
        "dogs_taken_for_birds": _r((predicted[dogs] == bird).mean()) if dogs.any() else None,
        "single_label_dog_clips": int(dogs.sum()),
        "confusion": confusion_matrix(truth, predicted, len(names)).tolist(),
    }


def build_report(
    clips: ClipSet, scores: np.ndarray, thresholds: np.ndarray, baseline: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Every figure of the report from labels, scores and thresholds (no model needed: tests pin it by hand)."""
    names = list(clips.class_names)
    labels = clips.labels.astype(bool)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    metrics = score_metrics(labels, scores, names)
    precision, recall = precision_recall_at(labels, scores, thresholds)
    fired = scores >= thresholds[None, :]
    other = ~labels.any(axis=1)
    metrics["other_clips"] = int(other.sum())
    metrics["other_false_alarm_rate"] = _r(fired[other].any(axis=1).mean()) if other.any() else None
    metrics["per_class"] = {
        n: {
            "positives": int(labels[:, k].sum()),
            "ap": metrics["per_class_ap"][n],
            "threshold": float(thresholds[k]),
            "precision": _r(precision[k]),
            "recall": _r(recall[k]),
            "other_false_alarm_rate": _r(fired[other, k].mean()) if other.any() else None,
        }
        for k, n in enumerate(names)
    }
    report: dict[str, Any] = {
        "data": {**clips.source, **clips.summary()},
        "metrics": metrics,
        "targets": {
            key: {
                "target": f"{op} {value}",
                "value": metrics[key],
                "met": metrics[key] is not None and (metrics[key] >= value if op == ">=" else metrics[key] <= value),
            }
            for key, (op, value) in TARGETS.items()
        },
        "seed": SEED_FIGURES,
    }
    if baseline is not None:
        report["baseline"] = {
            **{k: v for k, v in baseline.items() if k != "scores"},
            "metrics": score_metrics(labels, baseline["scores"], names),
        }
    return report


def write_report(
    report: dict[str, Any],
    out: Path,
    scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    baseline: dict[str, Any] | None = None,
) -> None:
    """report.json, REPORT.md and (with matplotlib) confusion.png and ap.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "REPORT.md").write_text(render_markdown(report))
    try:
        from .clips import confusion_png

        names = list(report["metrics"]["per_class_ap"])
        confusion_png(
            np.array(report["metrics"]["confusion"]),
            names,
            out / "confusion.png",
            "single-label eval clips: true class vs top-1",
        )
        _ap_png(report, out / "ap.png")
    except ImportError:
        log.warning("matplotlib missing: no PNGs")


def _ap_png(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["metrics"]["per_class_ap"])
    ours = [report["metrics"]["per_class_ap"][n] or 0 for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    y = np.arange(len(names))
    ax.barh(y - 0.2, ours, height=0.4, label="classifier")
    if "baseline" in report:
        base = [report["baseline"]["metrics"]["per_class_ap"][n] or 0 for n in names]
        ax.barh(y + 0.2, base, height=0.4, label="LR baseline")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision (all eval clips, 'other' included)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _validation_lines(clf: dict[str, Any]) -> list[str]:
    """What training measured on its own validation folds (never on this data), when the classifier recorded it."""
    val = clf.get("validation")
    if not val:
        return []
    lines = [
        "## Training-time validation (bal_train, out-of-fold, grouped by video id)",
        "",
        f"Thresholds: {clf.get('threshold_rule', '?')}.",
        f"Validation: macro AP {_f(val.get('macro_ap'))}, top-1 {_f(val.get('top1_single_label'))}, "
        f"'other' clips alarmed {_f(val.get('other_false_alarm_rate'))} ({val.get('folds', '?')} folds).",
        "",
    ]
    selection = clf.get("model_selection") or {}
    if len(selection) > 1:
        lines += ["| family | validation macro AP | validation top-1 | seconds |", "| --- | --- | --- | --- |"]
        for family, v in selection.items():
            lines.append(f"| {family} | {_f(v['macro_ap'])} | {_f(v['top1_single_label'])} | {v.get('seconds', '')} |")
        lines.append("")
    return lines


def _per_class_lines(m: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    names = list(m["per_class_ap"])
    lines = [
        "## Per class (shipped thresholds)",
        "",
        "| class | positives | AP | AP (LR) | threshold | precision | recall | 'other' alarmed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n in names:
        pc = m["per_class"][n]
        b = _f(base["per_class_ap"][n]) if base else "–"
        lines.append(
            f"| {n} | {pc['positives']} | {_f(pc['ap'])} | {b} | {pc['threshold']:.3f} | {_f(pc['precision'])} | "
            f"{_f(pc['recall'])} | {_f(pc['other_false_alarm_rate'])} |"
        )
    lines += ["", "## Confusion on single-label clips (rows true, columns top-1)", ""]
    short = [n.split("/")[0][:8] for n in names]
    lines.append("| true \\ predicted | " + " | ".join(short) + " |")
    lines.append("| --- " * (len(names) + 1) + "|")
    for n, row in zip(names, m["confusion"], strict=True):
        lines.append(f"| {n} | " + " | ".join(str(v) for v in row) + " |")
    lines.append("")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]
    base = report.get("baseline", {}).get("metrics")
    data = report["data"]
    clf = report.get("classifier", {})
    lines = [
        "# Classifier evaluation",
        "",
        f"Data: `{data.get('path')}` (sha256 `{str(data.get('sha256'))[:16]}…`): {data['clips']} clips, "
        f"{data['other']} 'other' (none of our classes), {m['single_label_clips']} with exactly one of our labels; "
        "labels include ontology descendants.",
        f"Classifier: `{clf.get('file', '?')}` (sha256 `{str(clf.get('sha256', '?'))[:16]}…`), model "
        f"`{clf.get('model', '?')}`, run on the TFLite runtime (one [1,10,128] window per invoke).",
        "",
        "## Headline",
        "",
        "| metric | classifier | LR baseline | target | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, label in (
        ("top1_single_label", "top-1, single-label clips"),
        ("macro_ap", "macro AP, all clips"),
        ("dogs_taken_for_birds", "dogs taken for birds"),
        ("other_false_alarm_rate", "false alarms on 'other' clips"),
    ):
        t = report["targets"][key]
        b = _f(base.get(key)) if base and key in base else "–"
        lines.append(f"| {label} | {_f(m[key])} | {b} | {t['target']} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "Seed figures (not on this data): " + "; ".join(f"{k}: {v}" for k, v in report["seed"].items()), ""]
    lines += _per_class_lines(m, base)
    if base:
        lines += [f"Baseline: {report['baseline']['model']}, trained on `{report['baseline']['data']['path']}`.", ""]
    lines += _validation_lines(clf)
    if clf.get("training_data"):
        td = clf["training_data"]
        lines += [
            f"Reproduce: `custom-convert train --data {td.get('path')} --out DIR` (seed {clf.get('seed')}; training "
            f"data sha256 `{str(td.get('sha256'))[:16]}…`) gives the same classifier.tflite bytes.",
            "",
        ]
    notes = report.get("notes")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)
