"""Per-class thresholds judged by what a subscriber sees: the published labels.

A window's class missing from its labels is a miss; a label on a negative window (an air conditioner, rain) is a
false alarm; a label of another class on a real event is a wrong label. Best-F1 thresholds trade these blindly and
then have to be raised again for false alarms, which cost the recall a city team needs. Here the thresholds start
low and are raised, one class at a time, only as far as the false-alarm and wrong-label budgets demand, each step
chosen to give up as few own labels as it can.
"""

from __future__ import annotations

import numpy as np

SEEN_FALSE_ALARM_TARGET = 0.02  # share of negative windows (kinds seen in training) with any label
WRONG_LABEL_TARGET = 0.04  # share of single-label positive windows with a label of another class
FLOOR = 0.05
STEP = 1e-6  # a threshold is set just past the score it must stop labelling

RULE = (
    f"per class, from {FLOOR}: raised one class at a time, each step just past the next offending out-of-fold score "
    f"(grouped CV), until at most {SEEN_FALSE_ALARM_TARGET:.0%} of the 'other' windows get a label and at most "
    f"{WRONG_LABEL_TARGET:.0%} of the single-label windows get a label of another class; each step the one that "
    "removes the most excess per own label lost (convert/thresholds.py)"
)


def label_thresholds(
    scores: np.ndarray,
    truth: np.ndarray,
    ceiling: float,
    seen_target: float = SEEN_FALSE_ALARM_TARGET,
    wrong_target: float = WRONG_LABEL_TARGET,
) -> list[float]:
    """Thresholds (one per class) that keep the most own labels within both budgets.

    `scores`: (windows, classes) out-of-fold scores of the real windows; `truth`: their multi-hot labels. Windows with
    no label are the negatives; windows with one label are judged for wrong labels (a mixture of two classes is
    right to carry both). Each class keeps its offending scores sorted and a count of how many classes label each
    window, so a step costs a few operations per class, not a pass over every window."""
    classes = truth.shape[1]
    cuts = np.full(classes, FLOOR)
    negatives = scores[~truth.any(axis=1)]
    single = truth.sum(axis=1) == 1
    positives, own = scores[single], truth[single]
    budgets = (int(np.floor(seen_target * len(negatives))), int(np.floor(wrong_target * len(positives))))
    # per window (negatives first, then single-label positives): how many classes give it an offending label
    offending = np.concatenate([negatives >= FLOOR, (positives >= FLOOR) & ~own]).sum(axis=1)
    is_negative = np.arange(len(offending)) < len(negatives)
    labelled = [int((offending[is_negative] > 0).sum()), int((offending[~is_negative] > 0).sum())]
    queues, own_sorted, next_at = [], [], [0] * classes
    for k in range(classes):
        candidates = np.concatenate([negatives[:, k], np.where(own[:, k], -np.inf, positives[:, k])])
        keep = np.flatnonzero(candidates >= FLOOR)
        order = keep[np.argsort(candidates[keep], kind="stable")]
        queues.append((candidates[order], order))
        own_sorted.append(np.sort(positives[own[:, k], k]))

    def excess(false_alarms: int, wrong: int) -> int:
        return max(0, false_alarms - budgets[0]) + max(0, wrong - budgets[1])

    while excess(*labelled) > 0:
        best: tuple[float, int, float, int, list[int]] | None = None
        for k in range(classes):
            values, windows = queues[k]
            start = next_at[k]
            if start >= len(values) or cuts[k] >= ceiling:
                continue
            new = min(float(values[start]) + STEP, ceiling)
            stop = int(np.searchsorted(values, new, side="left"))
            freed = [0, 0]  # windows that lose their last offending label: negatives, wrongly labelled positives
            for w in windows[start:stop]:
                if offending[w] == 1:
                    freed[0 if is_negative[w] else 1] += 1
            after = excess(labelled[0] - freed[0], labelled[1] - freed[1])
            lost = int(np.searchsorted(own_sorted[k], new, "left") - np.searchsorted(own_sorted[k], cuts[k], "left"))
            gain = (excess(*labelled) - after + 1e-3) / (lost + 1.0)  # 1e-3: a step removing nothing yet still counts
            if best is None or gain > best[0]:
                best = (gain, k, new, stop, freed)
        if best is None:  # every class at the ceiling
            break
        _, k, new, stop, freed = best
        offending[queues[k][1][next_at[k] : stop]] -= 1
        labelled = [labelled[0] - freed[0], labelled[1] - freed[1]]
        cuts[k], next_at[k] = new, max(stop, next_at[k] + 1)
    return [float(c) for c in cuts]


def label_recall(scores: np.ndarray, truth: np.ndarray, cuts: list[float] | np.ndarray) -> float:
    """Share of the single-label windows whose class is among their labels at `cuts`."""
    single = truth.sum(axis=1) == 1
    if not single.any():
        return float("nan")
    index = truth[single].argmax(axis=1)
    return float((scores[single][np.arange(int(single.sum())), index] >= np.asarray(cuts)[index]).mean())
