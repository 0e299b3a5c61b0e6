"""Grouped cross-validation: the folds every candidate is measured on (no window is scored by a head that trained
on its recording), the thresholds set from out-of-fold scores and a candidate's figures at its veto setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .choose import Candidate, Variant
from .figures import figures
from .fit import Head, fit_head
from .openset import (
    UNSEEN_FALSE_ALARM_TARGET,
    Setting,
    cap_false_alarms,
    false_alarm_rate,
    nested_choice_rate,
    nested_unseen_rate,
)
from .thresholds import RULE as LABEL_RULE
from .thresholds import label_thresholds
from .veto import VetoChoice, VetoSource, veto_choices

FOLDS = 5


THRESHOLD_CEILING = 0.99


THRESHOLD_RULE = (
    f"{LABEL_RULE}; at most {THRESHOLD_CEILING}; then raised where needed so that at most "
    f"{UNSEEN_FALSE_ALARM_TARGET:.0%} of 'other' windows of kinds the head never saw get a label "
    "(convert/head/openset.py)"
)


VETO_SCORED = (
    "top1", "label_recall", "wrong_label", "false_alarm_other", "false_alarm_unseen", "false_alarm_unseen_before_raise",
    "top1_recall", "recall",
)  # fmt: skip


def fold_touches(groups: list[tuple[str, ...]], fold_of: dict[str, int]) -> list[np.ndarray]:
    """Per fold, the windows holding any recording of that fold: none of them may train the fold's head."""
    window_fold = [{fold_of[g] for g in gs} for gs in groups]
    return [np.array([fold in f for f in window_fold]) for fold in range(FOLDS)]


def fold_heads(x: np.ndarray, y: np.ndarray, trains: np.ndarray, touches: list[np.ndarray], output: str) -> list[Head]:
    """The head each fold's test windows are scored by."""
    return [fit_head(x[trains & ~t], y[trains & ~t], output) for t in touches]


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    groups: list[tuple[str, ...]],
    real: np.ndarray,
    fold_of: dict[str, int],
    trains: np.ndarray,
    output: str,
) -> np.ndarray:
    """Out-of-fold scores of every real window by heads trained on the `trains` windows; a mix trains a fold only if
    none of its recordings is tested in it."""
    oof = np.zeros((int((real >= 0).sum()), y.shape[1]), dtype=np.float32)
    real_rows = np.flatnonzero(real >= 0)
    for fold, touches in enumerate(fold_touches(groups, fold_of)):
        train = trains & ~touches
        test = np.array([fold_of[groups[r][0]] == fold for r in real_rows])
        oof[test] = fit_head(x[train], y[train], output).scores(x[real_rows[test]])
    return oof


def thresholds_from(oof: np.ndarray, truth: np.ndarray) -> list[float]:
    return label_thresholds(oof, truth, THRESHOLD_CEILING)


@dataclass
class Folds:
    """The windows and folds every candidate is measured on, and how a candidate's figures are made."""

    y: np.ndarray
    real: np.ndarray
    groups: list[tuple[str, ...]]
    fold_of: dict[str, int]
    truth: np.ndarray
    on_clips: np.ndarray
    mixes: np.ndarray  # augmented windows
    proxy: np.ndarray  # windows holding a scene-level ("proxy") recording
    window_kinds: list[frozenset[str]]  # kinds of every recording in each window
    negative_rows: np.ndarray  # windows that are real "other" recordings
    negative_kinds: list[str]
    real_rows: np.ndarray  # windows that are real recordings (the rows of out-of-fold scores)
    exact: np.ndarray  # rows of out-of-fold scores that are clips with an exact label (no proxy)

    def trains(self, variant: Variant) -> np.ndarray:
        return (variant.augmented | ~self.mixes) & (variant.proxies | ~self.proxy)

    def finish(self, name: str, backbones: tuple[str, ...], cost: float, oof: np.ndarray, unseen: np.ndarray,
               vetoes: tuple[VetoSource, ...], **extra: Any) -> Candidate:  # fmt: skip
        """The candidate at its veto setting (see convert/head/veto.py): the one whose thresholds, raised until both
        false-alarm budgets hold, publish the most clips' own class (label recall). The unseen-kind rate reported
        chooses the setting nested too (`nested_choice_rate`)."""
        tries = [self._veto_try(choice, oof, unseen) for choice in veto_choices(vetoes)]
        plain = tries[0].figures
        ranked = sorted(tries, key=lambda t: (-t.figures["top1"], len(t.choice.sources), -t.choice.min_score))
        chosen = max(ranked, key=lambda t: t.figures["label_recall"])  # ties: the first in that order
        nested, per_kind = nested_choice_rate(
            [t.setting for t in ranked], self.negative_kinds, UNSEEN_FALSE_ALARM_TARGET, THRESHOLD_CEILING,
            self.truth[self.on_clips],
        )  # fmt: skip
        fig = {
            **chosen.figures, "false_alarm_unseen": nested, "false_alarm_unseen_by_kind": per_kind,
            "false_alarm_unseen_fixed_setting": chosen.figures["false_alarm_unseen"], "veto": chosen.choice.label,
            "top1_without_veto": plain["top1"], "false_alarm_unseen_without_veto": plain["false_alarm_unseen"],
        }  # fmt: skip
        record = [{"veto": t.choice.label, **{k: t.figures[k] for k in VETO_SCORED}} for t in tries]
        return Candidate(name, backbones, cost, fig, chosen.oof, chosen.cuts, chosen.setting.unseen,
                         veto=chosen.choice, veto_tries=record, plain_oof=oof, plain_unseen=unseen,
                         **extra)  # fmt: skip

    def _veto_try(self, choice: VetoChoice, oof: np.ndarray, unseen: np.ndarray) -> _VetoTry:
        v_oof, v_unseen = choice.apply(oof, self.real_rows), choice.apply(unseen, self.negative_rows)
        cuts, fig = _figures_at(self, v_oof, v_unseen)
        return _VetoTry(choice, cuts, fig, Setting(thresholds_from(v_oof, self.truth), v_unseen, v_oof[self.on_clips]),
                        v_oof)  # fmt: skip


@dataclass(frozen=True)
class _VetoTry:
    """One veto setting of a candidate: its thresholds, figures, nested-choice setting and vetoed scores."""

    choice: VetoChoice
    cuts: list[float]
    figures: dict[str, Any]
    setting: Setting
    oof: np.ndarray


def _figures_at(folds: Folds, oof: np.ndarray, unseen: np.ndarray) -> tuple[list[float], dict[str, Any]]:
    """Thresholds (grouped-CV rule, then raised for unseen kinds) and the figures at them."""
    base = thresholds_from(oof, folds.truth)
    clips = folds.on_clips
    cuts = cap_false_alarms(base, unseen, UNSEEN_FALSE_ALARM_TARGET, THRESHOLD_CEILING, oof[clips], folds.truth[clips])
    fig = figures(oof, folds.truth, cuts, clips, folds.exact)
    nested, per_kind = nested_unseen_rate(
        base, unseen, folds.negative_kinds, UNSEEN_FALSE_ALARM_TARGET, THRESHOLD_CEILING, oof[clips],
        folds.truth[clips],
    )  # fmt: skip
    fig.update(
        false_alarm_unseen=nested,
        false_alarm_unseen_by_kind=per_kind,
        false_alarm_unseen_before_raise=false_alarm_rate(unseen, thresholds_from(oof, folds.truth)),
    )
    return cuts, fig
