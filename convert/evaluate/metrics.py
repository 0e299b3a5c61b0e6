"""Classification metrics shared by every evaluation command, so all reports count the same way.

Plain numpy so that a hand computation in a test can pin each definition down; tests/test_fit_against_sklearn.py
checks average precision against scikit-learn's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as the mean of precision at each positive (sklearn's definition).

    Ties in score are taken as one step, so a constant scorer gets the positive rate, not a lucky order.
    NaN when there is no positive.
    """
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.diff(sorted_scores) != 0, True]  # evaluate only where the threshold really moves
    true_pos = np.cumsum(sorted_labels)[last_of_tie]
    predicted = (np.arange(len(scores)) + 1)[last_of_tie]
    precision = true_pos / predicted
    recall_step = np.diff(np.r_[0, true_pos]) / positives
    return float(np.sum(precision * recall_step))


def per_class_ap(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(clips, classes) multi-hot labels and scores -> (classes,) AP."""
    return np.array([average_precision(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])


def confusion_matrix(true_index: np.ndarray, predicted_index: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts; row = true class, column = predicted top class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_index), np.asarray(predicted_index)), 1)
    return matrix


def precision_recall_at(labels: np.ndarray, scores: np.ndarray, thresholds: Sequence[float]) -> tuple[np.ndarray, ...]:
    """Per-class precision and recall when a class is reported at score >= its threshold."""
    predicted = scores >= np.asarray(thresholds)[None, :]
    labels = labels.astype(bool)
    true_pos = (predicted & labels).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted.sum(axis=0) > 0, true_pos / predicted.sum(axis=0), np.nan)
        recall = np.where(labels.sum(axis=0) > 0, true_pos / labels.sum(axis=0), np.nan)
    return precision, recall


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray, floor: float = 0.05, ceiling: float = 0.95) -> float:
    """The score threshold with the highest F1 for one class (midpoint between neighbouring scores).

    Clamped so that a class seen only a few times can neither fire on everything nor never fire.
    """
    labels = np.asarray(labels, dtype=bool)
    candidates = np.unique(np.asarray(scores, dtype=np.float64))
    if not labels.any() or len(candidates) == 0:
        return ceiling
    cuts = np.r_[candidates[0] - 1e-6, (candidates[:-1] + candidates[1:]) / 2.0]
    best, best_f1 = ceiling, -1.0
    for cut in cuts:
        predicted = scores >= cut
        tp = int((predicted & labels).sum())
        f1 = 2 * tp / max(1, int(predicted.sum()) + int(labels.sum()))
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(cut), f1
    return float(np.clip(best, floor, ceiling))
