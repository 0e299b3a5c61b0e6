"""Per-class thresholds judged by what a subscriber sees: the published labels.

A window's class missing from its labels is a miss; a label on a negative window (an air conditioner, rain) is a
false alarm; a label of another class on a real event is a wrong label. Best-F1 thresholds trade these class by class,
blind to the budgets a city sets for the whole sensor, and then have to be raised again for false alarms, which cost
the recall a city team needs. Here the thresholds start at the ceiling and come down, one class at a time, as long
as the false-alarm and wrong-label budgets hold, each move the one that buys the most own labels per mistake.
"""

from __future__ import annotations

import numpy as np

SEEN_FALSE_ALARM_TARGET = 0.02  # share of negative windows (kinds seen in training) with any label
WRONG_LABEL_TARGET = 0.04  # share of single-label positive windows with a label of another class
FLOOR = 0.05

RULE = (
    "per class, from the ceiling down to an own window's out-of-fold score (grouped CV), one class at a time: the "
    "move publishing the most own labels per window newly labelled wrongly, as long as at most "
    f"{SEEN_FALSE_ALARM_TARGET:.0%} of the 'other' windows get a label and at most {WRONG_LABEL_TARGET:.0%} of the "
    f"single-label windows get a label of another class; never below {FLOOR} (convert/head/thresholds.py)"
)


def label_thresholds(
    scores: np.ndarray,
    truth: np.ndarray,
    ceiling: float,
    seen_target: float = SEEN_FALSE_ALARM_TARGET,
    wrong_target: float = WRONG_LABEL_TARGET,
) -> list[float]:
    """Thresholds (one per class) that publish the most own labels within both budgets.

    `scores`: (windows, classes) out-of-fold scores of the real windows; `truth`: their multi-hot labels. Windows with
    no label are the negatives; windows with one label are judged for wrong labels (a mixture of two classes is
    right to carry both). Every class starts at `ceiling` and is lowered, one move at a time, to one of its own
    positives' scores: the move with the most own labels gained per window newly labelled wrongly (a negative, or a
    positive of another class, that had no such label yet), among the moves that keep both budgets. A window already
    labelled wrongly costs nothing more, so the classes share the budget where their mistakes overlap."""
    classes = truth.shape[1]
    cuts = np.full(classes, float(ceiling))
    negatives = ~truth.any(axis=1)
    single = truth.sum(axis=1) == 1
    budgets = (int(np.floor(seen_target * negatives.sum())), int(np.floor(wrong_target * single.sum())))
    own = truth & single[:, None]
    wrong_for = ~truth & (single | negatives)[:, None]  # (window, class): this class labelling it is a mistake
    fired = scores >= cuts
    mistakes = (fired & wrong_for).sum(axis=1)  # per window: how many classes label it wrongly
    used = [int((mistakes[negatives] > 0).sum()), int((mistakes[single] > 0).sum())]
    while True:
        best: tuple[float, int, float] | None = None
        for k in range(classes):
            below = scores[:, k] < cuts[k]
            targets = np.sort(scores[below & own[:, k], k])[::-1]
            targets = targets[targets >= FLOOR]
            if not len(targets):
                continue
            gain = np.arange(1, len(targets) + 1)
            fresh = below & wrong_for[:, k] & (mistakes == 0)  # a window this move would newly label wrongly
            costs = [np.sort(scores[fresh & rows, k]) for rows in (negatives, single)]
            new = [len(c) - np.searchsorted(c, targets, side="left") for c in costs]  # windows with score >= target
            # a move adding no mistake is always taken, even where confident mistakes at the ceiling spent a budget
            ok = ((new[0] == 0) | (used[0] + new[0] <= budgets[0])) & ((new[1] == 0) | (used[1] + new[1] <= budgets[1]))
            if not ok.any():
                continue
            ratio = np.where(ok, gain / (new[0] + new[1] + 0.1), -1.0)
            j = int(np.argmax(ratio))
            if best is None or ratio[j] > best[0]:
                best = (float(ratio[j]), k, float(targets[j]))
        if best is None:
            return [float(c) for c in cuts]
        _, k, cut = best
        newly = (scores[:, k] >= cut) & (scores[:, k] < cuts[k]) & wrong_for[:, k]
        mistakes[newly] += 1
        used = [int((mistakes[negatives] > 0).sum()), int((mistakes[single] > 0).sum())]
        cuts[k] = cut


def label_recall(scores: np.ndarray, truth: np.ndarray, cuts: list[float] | np.ndarray) -> float:
    """Share of the single-label windows whose class is among their labels at `cuts`."""
    single = truth.sum(axis=1) == 1
    if not single.any():
        return float("nan")
    index = truth[single].argmax(axis=1)
    return float((scores[single][np.arange(int(single.sum())), index] >= np.asarray(cuts)[index]).mean())
