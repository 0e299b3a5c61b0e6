"""Honest open-set figures: how often the head labels kinds of sound it never saw.

Grouped cross-validation keeps a recording out of its own test fold, but an "other" window in a test fold still
shares its kind (rain, street music, a chainsaw...) with windows that trained the head, so its false-alarm rate
flatters the head: on a street the sensor meets kinds no negative covers. Here each negative kind is held out whole:
the head is trained without every window that contains that kind (augmented mixes included) and scores that kind's
windows. Thresholds are then raised, per class and only as far as needed, until those unseen-kind windows are
labelled at most `target` of the time; the rate reported for the shipped thresholds is nested (each kind judged by
thresholds set without it), so the figure is not tuned on itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .fit import Head
from .thresholds import label_recall

UNSEEN_FALSE_ALARM_TARGET = 0.05
Fit = Callable[[np.ndarray, np.ndarray], Head]  # (x, y) -> the head trained on them


def unseen_kind_scores(
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    window_kinds: Sequence[frozenset[str]],
    negative_rows: np.ndarray,
    negative_kinds: Sequence[str],
    fit: Fit,
) -> np.ndarray:
    """(negatives, classes) scores of each negative window by a head trained without any window of its kind.

    `train`: the windows the candidate trains on; `window_kinds`: the kinds of every recording in each window."""
    scores = np.zeros((len(negative_rows), y.shape[1]), dtype=np.float32)
    kinds = np.asarray(negative_kinds)
    for kind in sorted(set(negative_kinds)):
        without = train & np.array([kind not in ks for ks in window_kinds])
        rows = kinds == kind
        scores[rows] = fit(x[without], y[without]).scores(x[negative_rows[rows]])
    return scores


def false_alarm_rate(scores: np.ndarray, cuts: Sequence[float] | np.ndarray) -> float:
    """Share of negative windows with at least one class at or above its threshold."""
    return float((scores >= np.asarray(cuts)).any(axis=1).mean()) if len(scores) else float("nan")


def cap_false_alarms(
    cuts: Sequence[float],
    unseen: np.ndarray,
    target: float,
    ceiling: float,
    positives: np.ndarray | None = None,
    truth: np.ndarray | None = None,
) -> list[float]:
    """Raise thresholds until at most `target` of the unseen-kind windows get a label, giving up as little recall as
    it can: step by step, raise the one class threshold that silences the most labelled negative windows per
    positive window it loses (`positives`/`truth`: out-of-fold scores and labels of the real windows; without them
    every positive costs the same), each step just past the next negative score of that class."""
    cuts_arr = np.asarray(cuts, dtype=np.float64).copy()
    if not len(unseen):
        return [float(c) for c in cuts_arr]
    budget = int(np.floor(target * len(unseen)))
    while True:
        fired = unseen >= cuts_arr
        labelled = fired.any(axis=1)
        if labelled.sum() <= budget:
            return [float(c) for c in cuts_arr]
        best: tuple[float, int, float] | None = None
        for k in range(unseen.shape[1]):
            above = unseen[fired[:, k], k]
            if not len(above) or cuts_arr[k] >= ceiling:
                continue
            new = min(float(above.min()) + 1e-6, ceiling)
            trial = fired.copy()
            trial[:, k] = unseen[:, k] >= new
            silenced = int(labelled.sum() - trial.any(axis=1).sum())
            lost = 0
            if positives is not None and truth is not None:
                lost = int(((positives[:, k] >= cuts_arr[k]) & (positives[:, k] < new) & truth[:, k]).sum())
            gain = (silenced + 1e-3) / (lost + 1.0)  # 1e-3: a step that silences nothing yet is still a step
            if best is None or gain > best[0]:
                best = (gain, k, new)
        if best is None:  # every class at the ceiling
            return [float(c) for c in cuts_arr]
        cuts_arr[best[1]] = best[2]


def nested_unseen_rate(
    cuts: Sequence[float],
    unseen: np.ndarray,
    kinds: Sequence[str],
    target: float,
    ceiling: float,
    positives: np.ndarray | None = None,
    truth: np.ndarray | None = None,
) -> tuple[float, dict[str, float]]:
    """The unseen-kind false-alarm rate with each kind judged by thresholds capped on the other kinds only:
    the honest figure for the capping rule (capping on all kinds and scoring them would report the target itself).
    Returns the overall rate (over windows) and the rate per kind."""
    kinds_arr = np.asarray(kinds)
    fired = np.zeros(len(unseen), dtype=bool)
    per_kind = {}
    for kind in sorted(set(kinds)):
        mine = kinds_arr == kind
        capped = cap_false_alarms(cuts, unseen[~mine], target, ceiling, positives, truth)
        fired[mine] = (unseen[mine] >= np.asarray(capped)).any(axis=1)
        per_kind[kind] = float(fired[mine].mean())
    return (float(fired.mean()) if len(fired) else float("nan")), per_kind


@dataclass(frozen=True)
class Setting:
    """One way of scoring the same windows (e.g. a veto setting), with its thresholds before any raise."""

    base: list[float]
    unseen: np.ndarray  # (negatives, classes) unseen-kind scores
    positives: np.ndarray  # (clips, classes) out-of-fold scores of the real clips


def nested_choice_rate(
    settings: Sequence[Setting],
    kinds: Sequence[str],
    target: float,
    ceiling: float,
    truth: np.ndarray,
) -> tuple[float, dict[str, float]]:
    """The unseen-kind false-alarm rate when the setting is chosen too: each kind is judged by the setting whose
    thresholds, capped on the *other* kinds only, keep the most clips' own labels (the first such, so order
    `settings` by preference). Nothing about a kind decides how it is judged."""
    kinds_arr = np.asarray(kinds)
    fired = np.zeros(len(kinds_arr), dtype=bool)
    per_kind = {}
    for kind in sorted(set(kinds)):
        mine = kinds_arr == kind
        tries = [(s, cap_false_alarms(s.base, s.unseen[~mine], target, ceiling, s.positives, truth)) for s in settings]
        best, capped = max(tries, key=lambda t: label_recall(t[0].positives, truth, t[1]))
        fired[mine] = (best.unseen[mine] >= np.asarray(capped)).any(axis=1)
        per_kind[kind] = float(fired[mine].mean())
    return (float(fired.mean()) if len(fired) else float("nan")), per_kind
