"""A street is never quiet: label recall of the shipped candidate with every positive clip mixed into street
background at a known A-weighted SNR, out of fold.

Each positive clip is laid over a recording of street background (traffic, wind, air conditioning and other machine
hum, chatter) from the same test fold, so neither the event nor the background trained the fold's head that scores
the mixture; the background is another recording than the event's. The SNR is A-weighted and measured over the
event (its frames within 20 dB of its loudest), as a sound-level meter would hear the event stand out of the street.
The mixture is judged as a subscriber would: is the event's class among the published labels? A traffic or chatter
background may add its own label, which is right, not wrong.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import soxr

from custom.daemon.audio.pcm import SAMPLE_RATE_HZ
from custom.daemon.model.head import pool_features

from ..classes import URBAN_CLASSES
from .data import BackboneFeatures, Recording, load_waveform
from .fit import Head
from .folds import fold_heads, fold_touches
from .veto import VetoChoice, veto_source

if TYPE_CHECKING:
    from .choose import Candidate
    from .measure import Measured

SNRS_DB = (20.0, 10.0, 5.0, 0.0)
FRAME = 1024  # 64 ms at 16 kHz
EVENT_RANGE_DB = 20.0
HVAC_WORDS = ("air conditioner", "fan", "refrigerator", "generator")
BACKGROUND_KINDS = ("traffic", "wind", "hvac", "chatter")


def background_kind(recording: Recording) -> str | None:
    """Which street background a recording can stand for, if any (exact labels only: a proxy scene is not one)."""
    if recording.proxy:
        return None
    kind = recording.kind.lower()
    if recording.labels:
        label = URBAN_CLASSES[recording.labels[0]].clip_label
        return label if label in ("traffic", "chatter") else None
    if "wind" in kind:
        return "wind"
    return "hvac" if any(word in kind for word in HVAC_WORDS) else None


def _a_weight(rate_hz: int) -> np.ndarray:
    """A-weighting power gain per rfft bin (IEC 61672 curve; only ratios matter here, so no +2 dB offset)."""
    f = np.fft.rfftfreq(FRAME, 1.0 / rate_hz) ** 2
    ra = (12194.0**2 * f**2) / ((f + 20.6**2) * np.sqrt((f + 107.7**2) * (f + 737.9**2)) * (f + 12194.0**2))
    return np.asarray(ra**2)


def _frame_energy(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    frames = np.resize(x, (max(1, -(-len(x) // FRAME)), FRAME))  # the last frame wraps to the start, never zeros
    return np.asarray((np.abs(np.fft.rfft(frames * np.hanning(FRAME), axis=1)) ** 2 * weight).sum(axis=1))


def mix_at_snr(event: np.ndarray, background: np.ndarray, snr_db: float, rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """`event` over `background` (tiled to the event's length) so that, over the event's loud frames, the
    A-weighted energy of the event is `snr_db` above the background's; scaled down only if it would clip."""
    weight = _a_weight(rate_hz)
    bed = np.resize(background, len(event)).astype(np.float64)
    e_event = _frame_energy(event, weight)
    loud = e_event >= e_event.max() * 10 ** (-EVENT_RANGE_DB / 10)
    e_bed = _frame_energy(bed, weight)
    gain = np.sqrt(e_event[loud].mean() / max(float(e_bed[loud].mean()), 1e-20) * 10 ** (-snr_db / 10))
    out = event + bed * gain
    peak = float(np.max(np.abs(out)))
    return (out / peak * 0.99 if peak > 0.99 else out).astype(np.float32)


@dataclass(frozen=True)
class Member:
    """What scores a mixture for one backbone: its features, its pooling, and a head per fold."""

    features: BackboneFeatures
    rate_hz: int
    pooling: str
    with_scores: bool
    stride: int
    fold_heads: Sequence[Head]  # one per fold
    weight: float
    veto_scores: Callable[[np.ndarray], Any]  # pooled backbone scores (windows, outputs) -> a VetoSource


def _pairs(recordings: Sequence[Recording], events: Sequence[int], fold_of: dict[str, int], seed: int) -> list[int]:
    """For each event recording, a background recording of the same fold (another recording), kinds in turn."""
    rng = np.random.default_rng(seed)
    by_fold: dict[int, dict[str, list[int]]] = {}
    for i, r in enumerate(recordings):
        kind = background_kind(r)
        if kind is not None:
            by_fold.setdefault(fold_of[r.group], {}).setdefault(kind, []).append(i)
    chosen = []
    for n, i in enumerate(events):
        pool = by_fold.get(fold_of[recordings[i].group], {})
        kinds = [
            k for k in BACKGROUND_KINDS if any(recordings[j].group != recordings[i].group for j in pool.get(k, []))
        ]
        kind = kinds[n % len(kinds)] if kinds else None
        options = [j for j in pool.get(kind, []) if recordings[j].group != recordings[i].group] if kind else []
        chosen.append(int(rng.choice(options)) if options else -1)
    return chosen


def mixture_figures(
    recordings: Sequence[Recording],
    events: Sequence[int],
    fold_of: dict[str, int],
    members: Sequence[Member],
    apply_veto: Callable[[np.ndarray, list[Any]], np.ndarray],
    thresholds: Sequence[float],
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Label recall per class and overall at each SNR, and which background kinds were used."""
    backgrounds = _pairs(recordings, events, fold_of, seed)
    classes = len(URBAN_CLASSES)
    cuts = np.asarray(thresholds)
    hits = {snr: np.zeros(classes) for snr in SNRS_DB}
    count = np.zeros(classes)
    used: dict[str, int] = {}
    for i, b in zip(events, backgrounds, strict=True):
        if b < 0:
            continue
        k = recordings[i].labels[0]
        count[k] += 1
        kind = background_kind(recordings[b]) or "?"
        used[kind] = used.get(kind, 0) + 1
        event, bed = load_waveform(recordings[i]), load_waveform(recordings[b])
        fold = fold_of[recordings[i].group]
        mixes = [mix_at_snr(event, bed, snr) for snr in SNRS_DB]
        total = np.zeros((len(SNRS_DB), classes))
        sources = []
        for m in members:
            feats, pooled = [], []
            for mixed in mixes:
                wave = mixed if m.rate_hz == SAMPLE_RATE_HZ else soxr.resample(mixed, SAMPLE_RATE_HZ, m.rate_hz)
                scores, emb = m.features(wave.astype(np.float32))
                feats.append(pool_features(emb[:: m.stride], scores[:: m.stride], m.pooling, m.with_scores))
                pooled.append(scores[:: m.stride].mean(axis=0))
            total += m.weight * m.fold_heads[fold].scores(np.stack(feats))
            sources.append(m.veto_scores(np.stack(pooled)))
        published = apply_veto(total, sources) >= cuts
        for n, snr in enumerate(SNRS_DB):
            hits[snr][k] += published[n, k]
        if progress is not None:
            progress(1)
    per_class = {snr: [float(h / c) if c else float("nan") for h, c in zip(hits[snr], count, strict=True)]
                 for snr in SNRS_DB}  # fmt: skip
    overall = {snr: float(hits[snr].sum() / count.sum()) if count.sum() else float("nan") for snr in SNRS_DB}
    return {"snrs_db": list(SNRS_DB), "per_class": per_class, "overall": overall, "clips": int(count.sum()),
            "backgrounds": used}  # fmt: skip


def street_mixtures(measured: Measured, chosen: Candidate, seed: int) -> dict[str, Any]:
    """`mixture_figures` for the candidate that ships: each member's head refitted per fold on the windows that
    trained its out-of-fold scores, averaged with the candidate's weights, vetoed by its setting, judged at its
    thresholds. Also the share of the background recordings alone (out of fold) that get a label not their own."""
    from tqdm import tqdm

    folds = measured.folds
    touches = fold_touches(folds.groups, folds.fold_of)
    singles = chosen.members or (chosen,)
    weights = chosen.weights or (1.0,)
    members = []
    for single, weight in zip(singles, weights, strict=True):
        name, variant = single.backbones[0], single.variant
        assert variant is not None and single.features is not None and single.keep is not None
        backbone = measured.backbones[name]
        members.append(Member(
            BackboneFeatures(measured.probes[name]), backbone.rate_hz, variant.pooling, variant.with_scores,
            variant.patch_stride, fold_heads(single.features, measured.y, single.keep, touches, variant.output), weight,
            functools.partial(veto_source, name, backbone.class_map, measured.ontology),
        ))  # fmt: skip
    vetoing = {s.backbone for s in chosen.veto.sources}

    def apply_veto(scores: np.ndarray, sources: list[Any]) -> np.ndarray:
        mine = tuple(s for s in sources if s.backbone in vetoing)
        return VetoChoice(mine, chosen.veto.min_score, chosen.veto.max_own).apply(scores, np.arange(len(scores)))

    recordings = measured.recordings
    events = [i for i, r in enumerate(recordings) if r.source == "clips" and len(r.labels) == 1]
    with tqdm(total=len(events), desc="street mixtures", unit="clip", disable=None, mininterval=5) as bar:
        figures = mixture_figures(recordings, events, folds.fold_of, members, apply_veto, chosen.thresholds, seed,
                                  bar.update)  # fmt: skip
    rows = np.asarray(measured.examples[chosen.backbones[0]].real)[measured.real_rows]
    fired = chosen.oof >= np.asarray(chosen.thresholds)
    alone: dict[str, list[bool]] = {}
    for r, i in enumerate(rows):
        kind = background_kind(recordings[i])
        if kind is not None:
            own = set(recordings[i].labels)
            alone.setdefault(kind, []).append(any(fired[r, k] for k in range(fired.shape[1]) if k not in own))
    figures["backgrounds_alone"] = {k: float(np.mean(v)) for k, v in sorted(alone.items())}
    figures["backgrounds_alone_windows"] = {k: len(v) for k, v in sorted(alone.items())}
    return figures
