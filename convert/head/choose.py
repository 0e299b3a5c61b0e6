"""The candidates a build compares and the rule that picks the one that ships."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from custom.wire import exitcodes

from .data import DataError
from .fit import L2
from .openset import UNSEEN_FALSE_ALARM_TARGET
from .thresholds import SEEN_FALSE_ALARM_TARGET
from .veto import VetoChoice, VetoSource

TIE_LABEL_RECALL = 0.01  # label recall within this of the best is a tie: the cheaper per window ships


OUTPUT_RULE = (
    "each backbone's head, and the averaged pair, is measured with every output layer (sigmoid, softmax with "
    "'other'), each after its own veto and unseen-kind raise; the best label recall represents it, and within "
    f"{TIE_LABEL_RECALL} of the best, the fewest wrong labels"
)


CHOICE_RULE = (
    "best grouped-CV label recall on the clips (their class among the published labels) among the single-backbone "
    f"heads and the two heads averaged (a version-2 bundle) whose 'other' windows get a label at most "
    f"{SEEN_FALSE_ALARM_TARGET:.0%} of the time (kinds seen in training) and {UNSEEN_FALSE_ALARM_TARGET:.0%} (kinds "
    f"never seen, nested); within {TIE_LABEL_RECALL} of the best, the cheaper per window. One head over both "
    "backbones' concatenated features is measured but not shipped"
)


@dataclass(frozen=True)
class Variant:
    """How one backbone's window features are made and trained."""

    pooling: str
    with_scores: bool
    augmented: bool  # the thin classes' seeded mixes train the head too
    proxies: bool = True  # the scene-level ("proxy") recordings train the head too
    patch_stride: int = 1  # the front end's patch hop times this (YAMNet: 2 = non-overlapping patches, half the cost)
    output: str = "sigmoid"  # the head's output layer (convert/head/fit.py)

    @property
    def l2(self) -> float:
        return L2[self.output]

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "l2": self.l2}


@dataclass
class Candidate:
    """One head compared by grouped CV: a backbone's best variant, or a combination of both backbones (measured,
    never shipped: a bundle carries one backbone)."""

    name: str
    backbones: tuple[str, ...]
    cost_ms: float
    figures: dict[str, Any]  # at `thresholds`
    oof: np.ndarray  # out-of-fold scores of the real windows
    thresholds: list[float]
    unseen: np.ndarray | None = None  # (negatives, classes) scores by heads that never saw the window's kind
    variant: Variant | None = None  # a single backbone's head; None for combinations
    features: np.ndarray | None = None  # (windows, dims) the variant's features, all windows
    keep: np.ndarray | None = None  # which windows train it
    members: tuple[Candidate, ...] = ()  # averaged heads: the single-backbone candidates, with `weights`
    weights: tuple[float, ...] = ()
    veto: VetoChoice = field(default_factory=VetoChoice)  # chosen by the unseen-kind figure (convert/head/veto.py)
    veto_tries: list[dict[str, Any]] = field(default_factory=list)  # every veto setting tried, with its figures
    veto_source: VetoSource | None = None  # a single backbone's scores, for the veto of any candidate using it
    plain_oof: np.ndarray | None = None  # `oof` and `unseen` before the veto
    plain_unseen: np.ndarray | None = None

    @property
    def shippable(self) -> bool:
        """A single backbone's head, or several averaged (a version-2 bundle); a concatenated head is not."""
        if self.members:
            return all(m.shippable for m in self.members)
        return self.variant is not None and self.features is not None

    def record(self) -> dict[str, Any]:
        """Plain figures for the manifest provenance, default-bundle's decision and the report."""
        variant = self.variant.as_dict() if self.variant else {}
        if self.members:
            variant = {"weights": dict(zip(self.backbones, self.weights, strict=True))}
        return {
            "name": self.name, "backbones": list(self.backbones), "shippable": self.shippable,
            "cost_ms": self.cost_ms, "variant": variant, "veto": self.veto.label, "figures": self.figures,
            "thresholds": self.thresholds,
        }  # fmt: skip


def within_false_alarm_targets(fig: dict[str, Any]) -> bool:
    return bool(
        fig["false_alarm_other"] <= SEEN_FALSE_ALARM_TARGET and fig["false_alarm_unseen"] <= UNSEEN_FALSE_ALARM_TARGET
    )


def choose_candidate(candidates: list[Candidate]) -> Candidate:
    """The shippable candidate with the best grouped-CV label recall among those within both false-alarm targets (all
    of them if none is); within TIE_LABEL_RECALL of the best, the cheapest per window."""
    shippable = [c for c in candidates if c.shippable]
    pool = [c for c in shippable if within_false_alarm_targets(c.figures)] or shippable
    best = max(c.figures["label_recall"] for c in pool)
    tied = [c for c in pool if c.figures["label_recall"] >= best - TIE_LABEL_RECALL]
    return min(tied, key=lambda c: (c.cost_ms, -c.figures["label_recall"]))


def best_output(tries: list[Candidate]) -> Candidate:
    """OUTPUT_RULE: the try that publishes the most clips' own class; among near-ties, the one that mislabels least."""
    best = max(c.figures["label_recall"] for c in tries)
    tied = [c for c in tries if c.figures["label_recall"] >= best - TIE_LABEL_RECALL]
    return min(tied, key=lambda c: (c.figures["wrong_label"], -c.figures["label_recall"]))


def pick(candidates: list[Candidate], ship: str) -> Candidate:
    if ship == "best":
        return choose_candidate(candidates)
    named = [c for c in candidates if c.name.split()[0] == ship and c.shippable]
    if not named:
        names = ", ".join(c.name.split()[0] for c in candidates if c.shippable)
        raise DataError(f"--ship {ship}: no such shippable candidate in this run ({names})", exitcodes.USAGE)
    return named[0]
