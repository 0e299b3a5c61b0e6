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
from .thresholds import SEEN_FALSE_ALARM_TARGET, WRONG_LABEL_TARGET
from .veto import VetoChoice, VetoSource

TIE_LABEL_RECALL = 0.01  # label recall within this of the best is a tie: the cheaper per window ships


POOL_RULE = (
    f"among those within every mistake target ('other' windows labelled: at most {SEEN_FALSE_ALARM_TARGET:.0%} of "
    f"kinds seen in training, {UNSEEN_FALSE_ALARM_TARGET:.0%} of kinds never seen, nested; wrong labels at most "
    f"{WRONG_LABEL_TARGET:.0%}), or if none is, those within the two a head can be held to on the kinds it trained on "
    "(seen kinds, wrong labels), or if none is, all of them"
)


OUTPUT_RULE = (
    "each backbone's head, and each averaged pair, is measured with every output layer (sigmoid, softmax with "
    f"'other'), each after its own veto and unseen-kind raise; the best label recall {POOL_RULE} represents it; within "
    f"{TIE_LABEL_RECALL} of the best, the fewest mistakes (wrong labels plus unseen-kind false alarms)"
)


CHOICE_RULE = (
    "best grouped-CV label recall on the clips (their class among the published labels) among the single-backbone "
    f"heads and the two heads averaged (a version-2 bundle) {POOL_RULE}; within {TIE_LABEL_RECALL} of the best, the "
    "cheaper per window, then the fewest mistakes. One head over both backbones' concatenated features is measured "
    "but not shipped"
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


def _within(fig: dict[str, Any], unseen: bool) -> bool:
    seen_ok = fig["false_alarm_other"] <= SEEN_FALSE_ALARM_TARGET and fig["wrong_label"] <= WRONG_LABEL_TARGET
    return bool(seen_ok and (not unseen or fig["false_alarm_unseen"] <= UNSEEN_FALSE_ALARM_TARGET))


def _pool(candidates: list[Candidate]) -> list[Candidate]:
    """POOL_RULE. Label recall alone would ship the candidate that labels most, mistakes and all; no candidate may
    be within every target (none is on ../shared today), and then the ones that hold what they can are kept."""
    return (
        [c for c in candidates if _within(c.figures, unseen=True)]
        or [c for c in candidates if _within(c.figures, unseen=False)]
        or candidates
    )


def _mistakes(c: Candidate) -> float:
    return float(c.figures["wrong_label"] + c.figures["false_alarm_unseen"])


def _near_best(candidates: list[Candidate]) -> list[Candidate]:
    pool = _pool(candidates)
    best = max(c.figures["label_recall"] for c in pool)
    return [c for c in pool if c.figures["label_recall"] >= best - TIE_LABEL_RECALL]


def choose_candidate(candidates: list[Candidate]) -> Candidate:
    """CHOICE_RULE among the shippable candidates."""
    tied = _near_best([c for c in candidates if c.shippable])
    return min(tied, key=lambda c: (c.cost_ms, _mistakes(c), -c.figures["label_recall"]))


def best_output(tries: list[Candidate]) -> Candidate:
    """OUTPUT_RULE: one head (or averaged pair) measured with each output layer; the one that stands for it."""
    return min(_near_best(tries), key=lambda c: (_mistakes(c), -c.figures["label_recall"]))


def pick(candidates: list[Candidate], ship: str) -> Candidate:
    if ship == "best":
        return choose_candidate(candidates)
    named = [c for c in candidates if c.name.split()[0] == ship and c.shippable]
    if not named:
        names = ", ".join(c.name.split()[0] for c in candidates if c.shippable)
        raise DataError(f"--ship {ship}: no such shippable candidate in this run ({names})", exitcodes.USAGE)
    return named[0]
