"""The AudioSet-score veto: the backbone's own scores silence a class when a sound that is none of ours dominates.

A head learns "not ours" only from the negative kinds it was trained on; on a kind it never saw it tends to name
its nearest class (a chainsaw is a "Jackhammer", a hen a "Dog", street music a "Vehicle horn"). The backbones were
trained on all of AudioSet and usually name such a sound outright, so a window whose strongest *foreign* AudioSet
score (a label that is not one of our classes, not an ancestor of one and not street background) is at least
`min_score` and beats the class's own AudioSet score loses that class. Which labels are foreign comes from the
ontology alone, never from the negatives; which backbone(s) veto and at what score is chosen by the unseen-kind
figure (leave-one-negative-kind-out), with the closed-set top-1 allowed to drop by at most `VETO_TOP1_COST`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from custom.daemon.model.bundle import VetoSpec

from .classes import URBAN_CLASSES
from .ontology import Ontology

# Sound a street sensor hears under every class (people, vehicles, alarms, room/channel character, generic impacts):
# never evidence against a class. Everything else outside our classes' subtrees and ancestors is foreign: music,
# natural sounds, other animals, tools, engines, domestic sounds, mechanisms (air conditioning, fans)...
STREET_BACKGROUND = (
    "Human sounds", "Vehicle", "Alarm", "Source-ambiguous sounds", "Channel, environment and background", "Silence",
)  # fmt: skip
VETO_MIN_SCORES = (0.4, 0.5, 0.6, 0.7)
VETO_TOP1_COST = 0.02  # closed-set top-1 the veto may cost


@dataclass(frozen=True)
class VetoSource:
    """One backbone's scores of every window, and which of its outputs are foreign / each class's own."""

    backbone: str
    pooled: np.ndarray  # (windows, outputs) backbone scores, mean over each window's patches as the daemon pools
    foreign: tuple[int, ...]
    class_outputs: tuple[tuple[int, ...], ...]

    def mask(self, rows: np.ndarray, min_score: float, margin: float = 0.0) -> np.ndarray:
        """(len(rows), classes) True where the veto silences the class; the daemon's `Veto` on these windows."""
        scores = self.pooled[rows]
        foreign = scores[:, list(self.foreign)].max(axis=1)
        own = np.stack([scores[:, list(o)].max(axis=1) for o in self.class_outputs], axis=1)
        vetoed: np.ndarray = (foreign[:, None] >= min_score) & (foreign[:, None] > own + margin)
        return vetoed

    def spec(self, min_score: float, margin: float = 0.0) -> VetoSpec:
        return VetoSpec(self.foreign, self.class_outputs, float(min_score), float(margin))


def veto_source(backbone: str, class_map: Mapping[str, int], ontology: Ontology, pooled: np.ndarray) -> VetoSource:
    """`class_map`: AudioSet mid -> the backbone's output index."""
    friendly: set[str] = set()
    for c in URBAN_CLASSES:
        friendly |= {c.mid, *ontology.descendants(c.mid), *ontology.ancestors(c.mid)}
    for name in STREET_BACKGROUND:
        friendly |= set(ontology.with_descendants(ontology.mid(name)))
    foreign = tuple(sorted(i for mid, i in class_map.items() if mid not in friendly))
    own = tuple(
        tuple(sorted(class_map[m] for m in ontology.with_descendants(c.mid) if m in class_map)) for c in URBAN_CLASSES
    )
    return VetoSource(backbone, pooled, foreign, own)


@dataclass(frozen=True)
class VetoChoice:
    sources: tuple[VetoSource, ...] = ()  # empty: no veto
    min_score: float = 0.0

    @property
    def label(self) -> str:
        if not self.sources:
            return "none"
        return f"{'+'.join(s.backbone for s in self.sources)} >= {self.min_score:.1f}"

    def apply(self, scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Scores of windows `rows` with vetoed classes set to 0 (any source vetoing silences the class)."""
        if not self.sources:
            return scores
        vetoed = np.zeros(scores.shape, dtype=bool)
        for source in self.sources:
            vetoed |= source.mask(rows, self.min_score)
        return np.where(vetoed, 0.0, scores).astype(scores.dtype)


def veto_choices(sources: Sequence[VetoSource]) -> list[VetoChoice]:
    """No veto, then each backbone alone and all together, at every score in VETO_MIN_SCORES."""
    groups = [(s,) for s in sources] + ([tuple(sources)] if len(sources) > 1 else [])
    return [VetoChoice()] + [VetoChoice(g, v) for g in groups for v in VETO_MIN_SCORES]
