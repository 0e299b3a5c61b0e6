"""A head's AudioSet-score veto: the backbone's own scores silence a class when a sound that is none of ours dominates.

The rule lives here once, for the daemon and for the converter that chooses its setting on thousands of windows at a
time (`convert/head/veto.py`): both call `veto_mask` and `veto_factors`, so the figures in the build report are the
scores a sensor publishes.
"""

from __future__ import annotations

import numpy as np

from .bundle import VetoSpec


def veto_mask(foreign: np.ndarray, own: np.ndarray, min_score: float, max_own: float) -> np.ndarray:
    """True where a class is vetoed. `foreign`: the strongest foreign score, broadcastable against `own`, each
    class's own strongest score (one window or many). A foreign sound must be loud enough and beat the class's own
    evidence, and (with `max_own` < 1) the backbone must hear almost nothing of the class."""
    vetoed: np.ndarray = (foreign >= min_score) & (foreign > own) & (own < max_own)
    return vetoed


def veto_factors(vetoed: np.ndarray, scale: float) -> np.ndarray:
    """Multipliers for the scores: `scale` where vetoed, 1 elsewhere (scaled, not zeroed, so the ranking stays)."""
    factors: np.ndarray = np.where(vetoed, np.float32(scale), np.float32(1.0))
    return factors


class Veto:
    """A head's veto (see `VetoSpec`) on one window: index tables built once, so a window costs a few numpy ops."""

    def __init__(self, spec: VetoSpec, width: int) -> None:
        """`width`: the backbone's score outputs (load_bundle checked that every index the spec names is below it)."""
        self.width = width
        self.foreign = np.asarray(spec.foreign_outputs)
        self.own = np.zeros((width, len(spec.class_outputs)), dtype=bool)
        for j, outputs in enumerate(spec.class_outputs):
            self.own[list(outputs), j] = True
        self.min_score = float(spec.min_score)
        self.max_own = float(spec.max_own)
        self.scale = float(spec.scale)

    def __call__(self, patch_scores: np.ndarray) -> np.ndarray:
        """(patches, outputs) backbone scores of one window -> (classes,) bool, True where the class is vetoed."""
        pooled = patch_scores.mean(axis=0)
        own = np.where(self.own, pooled[:, None], 0.0).max(axis=0)
        return veto_mask(pooled[self.foreign].max(), own, self.min_score, self.max_own)

    def factors(self, vetoed: np.ndarray) -> np.ndarray:
        """(classes,) multipliers for this window's scores; a single model and an ensemble's average apply these."""
        return veto_factors(vetoed, self.scale)
