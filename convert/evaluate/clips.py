"""Classify every real recording in a clips manifest with a bundle and report how often it is right.

Each clip's first 10 s window goes through the same Model code path as the live sensor. A clip counts as right
when the top class is its label (top-1). Per class: recall = right / clips of that class, precision = right /
clips whose top class it was. Also reported: recall at the bundle's shipped thresholds (the label is among the
event's `labels`). Writes a text table to stdout and, with --report, clips_report.json and a confusion-matrix PNG.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from custom.daemon.model.bundle import BundleError, load_bundle
from custom.daemon.model.inference import Model
from custom.wire import exitcodes

from ..classes import URBAN_CLASSES
from .labelled_clips import clip_outputs, read_manifest
from .metrics import confusion_matrix

HELP = "classify the labelled clips of a manifest with a bundle: top-1, per-class recall/precision, confusion"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    parser.add_argument("--manifest", type=Path, required=True, help="clips manifest.csv (path,label,...)")
    parser.add_argument("--report", type=Path, help="folder for clips_report.json and confusion_clips.png")
    parser.add_argument("--threads", type=int, default=1)


def confusion_png(matrix: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """Row-normalised confusion matrix with counts, readable at a glance in a report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted (top class)")
    ax.set_ylabel("true label")
    ax.set_title(title)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if rows[i, j] > 0.5 else "k")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    try:
        model = Model(load_bundle(args.bundle), threads=args.threads)
    except BundleError as exc:
        print(f"custom-convert evaluate-clips: bad bundle: {exc}")
        return exitcodes.CONFIG
    try:
        clips = read_manifest(args.manifest)
    except (OSError, ValueError, KeyError) as exc:
        print(f"custom-convert evaluate-clips: {args.manifest}: {exc}")
        return exitcodes.NO_INPUT
    names = list(model.bundle.class_names)
    if names != [c.name for c in URBAN_CLASSES]:
        print(f"custom-convert evaluate-clips: bundle classes {names} are not the manifest's 10 urban classes")
        return exitcodes.CONFIG
    from tqdm import tqdm

    with tqdm(total=len(clips), desc="clips", unit="clip", disable=None) as bar:
        outputs = clip_outputs(model, clips, progress=bar.update)
    fig = _Figures.of(model, outputs, np.array([c.class_index for c in clips]))
    _print_table(model, names, fig)
    if args.report is not None:
        _write_report(args.report, args.manifest, model, names, fig)
    return exitcodes.OK


@dataclass(frozen=True)
class _Figures:
    clips: int
    top1: float
    matrix: np.ndarray  # (classes, classes) rows true, columns predicted
    recall: np.ndarray
    precision: np.ndarray
    recall_at_threshold: np.ndarray  # the clip's class among the event's labels

    @classmethod
    def of(cls, model: Model, outputs: list[np.ndarray], truth: np.ndarray) -> _Figures:
        classes = len(model.bundle.class_names)
        scores = np.stack([model.class_scores(o) for o in outputs])  # (clips, classes)
        predicted = scores.argmax(axis=1)
        matrix = confusion_matrix(truth, predicted, classes)
        detected = scores[np.arange(len(truth)), truth] >= np.asarray(model.bundle.thresholds)[truth]
        return cls(
            clips=len(truth),
            top1=float((predicted == truth).mean()),
            matrix=matrix,
            recall=np.diag(matrix) / np.maximum(1, matrix.sum(axis=1)),
            precision=np.diag(matrix) / np.maximum(1, matrix.sum(axis=0)),
            recall_at_threshold=np.array(
                [detected[truth == k].mean() if (truth == k).any() else np.nan for k in range(classes)]
            ),
        )


def _print_table(model: Model, names: list[str], fig: _Figures) -> None:
    print(f"bundle {model.bundle.bundle_id} ({model.bundle.sha256[:12]}), {fig.clips} clips: top-1 {fig.top1:.3f}")
    print(f"{'class':<18} {'clips':>5} {'recall':>7} {'precision':>9} {'recall@thr':>10}")
    for k, name in enumerate(names):
        count = int(fig.matrix[k].sum())
        print(
            f"{name:<18} {count:>5} {fig.recall[k]:>7.3f} {fig.precision[k]:>9.3f} {fig.recall_at_threshold[k]:>10.3f}"
        )
    short = [n[:6] for n in names]
    print("confusion (rows true, columns predicted):")
    print(" " * 19 + " ".join(f"{s:>6}" for s in short))
    for k, name in enumerate(names):
        print(f"{name:<18} " + " ".join(f"{v:>6d}" for v in fig.matrix[k]))


def _write_report(out: Path, manifest: Path, model: Model, names: list[str], fig: _Figures) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "bundle": {"id": model.bundle.bundle_id, "sha256": model.bundle.sha256},
        "manifest": str(manifest),
        "clips": fig.clips,
        "top1": round(fig.top1, 4),
        "per_class": {
            name: {
                "clips": int(fig.matrix[k].sum()),
                "recall": round(float(fig.recall[k]), 4),
                "precision": round(float(fig.precision[k]), 4),
                "recall_at_threshold": round(float(fig.recall_at_threshold[k]), 4),
            }
            for k, name in enumerate(names)
        },
        "confusion": {"rows_true_columns_predicted": names, "matrix": fig.matrix.tolist()},
    }
    (out / "clips_report.json").write_text(json.dumps(report, indent=2) + "\n")
    confusion_png(fig.matrix, names, out / "confusion_clips.png", f"{model.bundle.bundle_id} on real clips")
    print(f"report written to {out}")
