"""What a head's scores mean to a subscriber, counted one way for every candidate, the mapping and the report."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluate.metrics import per_class_ap


def figures(
    scores: np.ndarray, truth: np.ndarray, cuts: list[float], on_clips: np.ndarray, exact: np.ndarray | None = None
) -> dict[str, Any]:
    """top-1 and per-class recall/precision (at the thresholds) on the clips; false alarms on 'other' windows.
    `exact`: the clips whose label is exact (not a scene-level proxy), judged apart too: issue 18's own check of
    the shipped bundle counts exact-labelled clips only."""
    extra: dict[str, Any] = {}
    if exact is not None:
        judged = figures(scores, truth, cuts, exact)
        extra = {
            "top1_exact": judged["top1"],
            "top1_recall_exact": judged["top1_recall"],
            "clips_exact": judged["clips"],
        }
    single = on_clips & (truth.sum(axis=1) == 1)
    true_index = truth[single].argmax(axis=1)
    predicted = scores[single].argmax(axis=1)
    named = scores[single].max(axis=1) > 0  # every class vetoed at scale 0: no top class, so never a hit
    hit = (predicted == true_index) & named
    fired = scores >= np.asarray(cuts)
    recall, precision = [], []
    for k in range(truth.shape[1]):
        pos = on_clips & truth[:, k]
        recall.append(float((fired[pos, k]).mean()) if pos.any() else float("nan"))
        sel = on_clips & fired[:, k]
        precision.append(float(truth[sel, k].mean()) if sel.any() else float("nan"))
    of_class = [true_index == k for k in range(truth.shape[1])]
    top1_recall = [float(hit[sel].mean()) if sel.any() else float("nan") for sel in of_class]  # nan: no such clip
    negatives = ~truth.any(axis=1)
    return {
        **label_figures(fired, truth, single),
        "label_recall_all_real": label_figures(fired, truth, truth.sum(axis=1) == 1)["label_recall"],
        "top1": float(hit.mean()),
        "top1_recall": top1_recall,
        "recall": recall,
        "precision": precision,
        "macro_ap": float(np.nanmean(per_class_ap(truth[on_clips], scores[on_clips]))),
        "false_alarm_other": float(fired[negatives].any(axis=1).mean()) if negatives.any() else float("nan"),
        "other_windows": int(negatives.sum()),
        "clips": int(single.sum()),
        "confusion": np.bincount(true_index[named] * truth.shape[1] + predicted[named], minlength=truth.shape[1] ** 2)
        .reshape(truth.shape[1], truth.shape[1])
        .tolist(),
        **extra,
    }


def label_figures(fired: np.ndarray, truth: np.ndarray, judged: np.ndarray) -> dict[str, float]:
    """What a subscriber sees on the `judged` single-label windows: its class among the published labels (label
    recall), a label of another class (wrong label), or no label at all."""
    rows = np.flatnonzero(judged)
    if not len(rows):
        return {"label_recall": float("nan"), "wrong_label": float("nan"), "no_label": float("nan")}
    true_index = truth[rows].argmax(axis=1)
    published = fired[rows]
    own = published[np.arange(len(rows)), true_index]
    other = published.copy()
    other[np.arange(len(rows)), true_index] = False
    return {
        "label_recall": float(own.mean()),
        "wrong_label": float(other.any(axis=1).mean()),
        "no_label": float((~published.any(axis=1)).mean()),
    }
