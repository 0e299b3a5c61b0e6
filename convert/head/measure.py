"""One build's measurements before anything is written: the windows, the folds, today's mapping and every candidate
head, all scored out of fold on the same grouped folds.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.model.inference import Model

from ..classes import URBAN_CLASSES
from ..evaluate.metrics import best_f1_threshold
from ..ontology import Ontology
from .backbones import BACKBONES, HeadBackbone, prepare
from .choose import TIE_LABEL_RECALL, Candidate, Variant, best_output
from .data import Examples, Recording, load_waveform, read_recordings, recording_fold_map
from .features import probe, window_examples
from .figures import figures
from .fit import OUTPUTS, fit_head, window_features
from .folds import FOLDS, Folds, cross_validate, thresholds_from
from .openset import unseen_kind_scores
from .veto import veto_source

# Pooling variants per backbone: convert/head/backbones.py. For YAMNet, appending its 521 scores lost 2-3 points of
# top-1 in every pooling on ../shared (2026-11-30), so it is no longer tried.
COST_WINDOWS = 5


SCORED = ("label_recall", "wrong_label", "top1", "macro_ap", "false_alarm_other", "top1_recall")


AVERAGE_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the first member's share, tried by grouped CV


@dataclass
class HeadResult:
    """What a head build measured, for the summary, the manifest provenance, default-bundle and the report."""

    variants: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)  # backbone -> its variant (+ "weights" when averaged)
    chosen_name: str = ""
    thresholds: list[float] = field(default_factory=list)
    head_oof: np.ndarray | None = None  # (windows, classes) out-of-fold head scores of the real windows
    mapping_scores: np.ndarray | None = None  # (windows, classes) today's mapping on the same windows
    mapping_thresholds: list[float] = field(default_factory=list)
    truth: np.ndarray | None = None  # (windows, classes) multi-hot of the real windows
    source: list[str] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    held_out_rows: int = 0
    figures: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every head compared, with figures and cost
    costs: dict[str, float] = field(default_factory=dict)  # ms per window: mapping and each candidate
    # label recall under street background (convert/head/mixtures.py)
    mixtures: dict[str, Any] = field(default_factory=dict)
    veto_tries: list[dict[str, Any]] = field(default_factory=list)  # the shipped candidate's veto settings tried
    output_tries: list[dict[str, Any]] = field(default_factory=list)  # every output layer (pair) after veto and raise


@dataclass
class Measured:
    """Everything one run measured before anything is written: the windows, the folds and every candidate."""

    recordings: list[Any]
    backbones: dict[str, HeadBackbone]
    examples: dict[str, Examples]
    y: np.ndarray  # (windows, classes) labels of every window, mixes included
    real_rows: np.ndarray  # rows of y that are real recordings (not mixes)
    candidates: list[Candidate]
    result: HeadResult
    folds: Folds
    probes: dict[str, Model]  # each backbone as the daemon runs it, for windows made after measuring (mixtures)
    ontology: Ontology


def window_cost_ms(models: list[Model], recordings, repeats: int = COST_WINDOWS) -> list[float]:
    """Median ms per 10 s window (front end + backbone + head, 1 thread) of each model, interleaved on the same
    real recording so machine load hits all alike."""
    wave = {
        m.bundle.frontend.sample_rate_hz: np.resize(load_waveform(recordings[0], m.bundle.frontend.sample_rate_hz),
                                                    int(10 * m.bundle.frontend.sample_rate_hz))
        for m in models
    }  # fmt: skip
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for i, model in enumerate(models):
            t0 = time.perf_counter()
            model.scores(wave[model.bundle.frontend.sample_rate_hz])
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(t)) for t in times]


def measure(args: argparse.Namespace, work: Path) -> Measured:
    """Features of every window from the daemon's own backbone code, today's mapping and every candidate head, all
    scored out of fold on the same grouped folds, and on negative kinds left out whole."""
    names = BACKBONES if args.backbone == "both" else (args.backbone,)
    recordings, held_out = read_recordings(args.shared, limit_per_label=args.limit_per_label, licences=args.licences)
    print(f"recordings: {len(recordings)} ({held_out} held-out rows skipped)", flush=True)
    # YAMNet's features are always computed: today's mapping is scored on them in the same run
    backbones = {n: prepare(n, args.shared, work) for n in ("yamnet", *[n for n in names if n != "yamnet"])}
    ontology = Ontology.load(args.shared / "data/audioset/ontology.json")
    probes = {n: probe(args, b, work) for n, b in backbones.items()}
    examples = {n: window_examples(args, b, probes[n], recordings, args.shared) for n, b in backbones.items()}
    folds = _folds(recordings, examples, args.seed)
    result = _head_result(recordings, examples["yamnet"], folds, held_out)
    mapping_figures = _score_mapping(result, backbones["yamnet"].mapping, examples["yamnet"], folds)
    costs = dict(zip(probes, window_cost_ms(list(probes.values()), recordings), strict=True))
    print(
        f"{'backbone':<12} {'pooling':<9} {'+scores':<8} {'mixes':<6} {'proxy':<6} {'output':<8} {'labels':>6} "
        f"{'top-1':>6} {'macro AP':>9} "
        f"{'other':>6}   (grouped {FOLDS}-fold CV, {int(folds.on_clips.sum())} clips)"
    )
    per_output = [
        _single_backbone(name, backbones[name], examples[name], folds, result, costs[name], ontology) for name in names
    ]
    tries = [c for outputs in per_output for c in outputs]
    candidates = [best_output(outputs) for outputs in per_output]
    if len(per_output) == 2:
        averaged = _averaged(*per_output, folds)
        tries += averaged
        candidates += [_concatenated(*candidates, folds), best_output(averaged)]
    result.output_tries = [_output_try(c) for c in tries]
    _print_candidates([*tries, *[c for c in candidates if c.name == "concatenated"]])
    result.candidates = [c.record() for c in candidates]
    result.costs = {"mapping": costs["yamnet"], **{c.name: c.cost_ms for c in candidates}}
    result.figures = {"mapping": mapping_figures}
    return Measured(
        recordings, backbones, examples, folds.y, folds.real_rows, candidates, result, folds, probes, ontology
    )


def _folds(recordings: list[Recording], examples: dict[str, Examples], seed: int) -> Folds:
    """The grouped folds and what each window is (clip, mix, proxy, negative kind), from YAMNet's windows; every
    backbone's windows must be the same ones."""
    base = examples["yamnet"]
    for n, ex in examples.items():
        if ex.groups != base.groups or not np.array_equal(np.stack(ex.labels), np.stack(base.labels)):
            raise RuntimeError(f"{n} windows do not line up with YAMNet's (same seed must give the same mixes)")
    y = np.stack(base.labels)
    real = np.asarray(base.real)
    real_rows = np.flatnonzero(real >= 0)
    truth = y[real_rows]
    by_group = {r.group: r for r in recordings}
    negatives = np.flatnonzero((real >= 0) & ~y.any(axis=1))
    return Folds(
        y=y, real=real, groups=base.groups,
        fold_of=recording_fold_map([recordings[i].group for i in real[real_rows]], truth, FOLDS, seed),
        truth=truth, on_clips=np.array([recordings[i].source == "clips" for i in real[real_rows]]), mixes=real < 0,
        proxy=np.array([any(by_group[g].proxy for g in gs) for gs in base.groups]),
        window_kinds=[frozenset(by_group[g].kind for g in gs) for gs in base.groups],
        negative_rows=negatives, negative_kinds=[recordings[real[r]].kind for r in negatives], real_rows=real_rows,
        exact=np.array([recordings[i].source == "clips" and not recordings[i].proxy for i in real[real_rows]]),
    )  # fmt: skip


def _head_result(recordings: list[Recording], base: Examples, folds: Folds, held_out: int) -> HeadResult:
    """What the report says about the windows: their source and kind, and recordings per label and source."""
    real = folds.real[folds.real_rows]
    result = HeadResult(truth=folds.truth, held_out_rows=held_out)
    result.source = [recordings[i].source for i in real]
    result.kind = [recordings[i].kind for i in real]
    for rec in recordings:
        label = URBAN_CLASSES[rec.labels[0]].clip_label if rec.labels else "other"
        label += " (proxy)" if rec.proxy else ""
        result.counts.setdefault(label, {}).setdefault(rec.source, 0)
        result.counts[label][rec.source] += 1
    result.counts.setdefault("(augmented mixes)", {})["clips"] = len(base.real) - len(folds.real_rows)
    return result


def _score_mapping(result: HeadResult, mapping: list[tuple[int, ...]], base: Examples, folds: Folds) -> dict[str, Any]:
    """Today's mapping on the same windows: mean over patches of YAMNet's own scores, class by mid; its thresholds
    as the yamnet converter ships them, best F1 per class on all clips (optimistic for the mapping)."""
    truth = folds.truth
    pooled = np.stack([base.scores[r].mean(axis=0) for r in folds.real_rows])
    result.mapping_scores = np.stack([pooled[:, list(idx)].max(axis=1) for idx in mapping], axis=1)
    clip_rows = np.flatnonzero(folds.on_clips)
    result.mapping_thresholds = [best_f1_threshold(truth[clip_rows, k], result.mapping_scores[clip_rows, k]) for k in
                                 range(10)]  # fmt: skip
    mapping_figures = figures(result.mapping_scores, truth, result.mapping_thresholds, folds.on_clips, folds.exact)
    mapping_figures["false_alarm_unseen"] = mapping_figures["false_alarm_other"]  # the mapping learnt no kind
    return mapping_figures


def _single_backbone(
    name: str, backbone: HeadBackbone, examples: Examples, folds: Folds, result: HeadResult, cost_ms: float,
    ontology: Ontology,
) -> list[Candidate]:  # fmt: skip
    """Every variant of one backbone's head by grouped CV with the first output layer (each a row of the printed
    table and of the report); the best one is then fitted with every output layer too, and each becomes a candidate
    with its unseen-kind scores and veto. Trying every output on every variant as well doubled the CI rebuild's fits
    for variants the open-set raise then judged alike."""
    proxies = (True, False) if folds.proxy.any() else (True,)

    def tried(variant: Variant) -> tuple[Variant, np.ndarray, np.ndarray, dict[str, Any]]:
        x = window_features(examples, variant.pooling, variant.with_scores, variant.patch_stride)
        oof = cross_validate(x, folds.y, folds.groups, folds.real, folds.fold_of, folds.trains(variant), variant.output)
        fig = figures(oof, folds.truth, thresholds_from(oof, folds.truth), folds.on_clips)
        result.variants.append({"backbone": name, **variant.as_dict(), **{k: fig[k] for k in SCORED}})
        _print_row(name, f"{variant.pooling}/{variant.patch_stride}", str(variant.with_scores),
                   str(variant.augmented), str(variant.proxies), variant.output, fig=fig)  # fmt: skip
        return variant, x, oof, fig

    best = _best_variant([
        tried(Variant(pooling, with_scores, augmented, with_proxies, stride, OUTPUTS[0]))
        for (pooling, with_scores, augmented), with_proxies, stride in itertools.product(
            backbone.variants, proxies, backbone.strides
        )
        if not augmented or folds.mixes.any()  # --augment 0: no mixes to try
    ])  # fmt: skip
    stride = best[0].patch_stride  # every output is fitted on the same variant: one cost, one veto source
    cost = cost_ms / stride  # the backbone's invokes dominate: half the patches, ~half the time
    pooled = np.stack([s[::stride].mean(axis=0) for s in examples.scores])
    source = veto_source(name, backbone.class_map, ontology, pooled)
    candidates = []
    for output in OUTPUTS:
        variant, x, oof, _ = best if output == best[0].output else tried(dataclasses.replace(best[0], output=output))
        keep = folds.trains(variant)
        unseen = unseen_kind_scores(
            x, folds.y, keep, folds.window_kinds, folds.negative_rows, folds.negative_kinds,
            functools.partial(fit_head, output=output),
        )  # fmt: skip
        candidates.append(folds.finish(name, (name,), cost, oof, unseen, (source,), variant=variant, features=x,
                                       keep=keep, veto_source=source))  # fmt: skip
    return candidates


def _print_candidates(candidates: list[Candidate]) -> None:
    print(f"{'candidate (outputs)':<44} {'labels':>6} {'wrong':>6} {'top-1':>6} {'macro AP':>9} {'other: seen':>12} "
          f"{'unseen':>7} {'before raise':>13}  veto")  # fmt: skip
    for c in candidates:
        f = c.figures
        outputs = "/".join(m.variant.output for m in c.members or (c,) if m.variant)
        label = f"{c.name} ({outputs})" if outputs else c.name
        print(f"{label:<44} {f['label_recall']:>6.3f} {f['wrong_label']:>6.3f} {f['top1']:>6.3f} "
              f"{f['macro_ap']:>9.3f} {f['false_alarm_other']:>12.3f} {f['false_alarm_unseen']:>7.3f} "
              f"{f['false_alarm_unseen_before_raise']:>13.3f}  {c.veto.label}", flush=True)  # fmt: skip


def _best_variant(
    tried: list[tuple[Variant, np.ndarray, np.ndarray, dict[str, Any]]],
) -> tuple[Variant, np.ndarray, np.ndarray, dict[str, Any]]:
    """Best grouped-CV label recall (what a subscriber sees; then top-1); within TIE_LABEL_RECALL of it, the largest
    patch stride (the cheapest)."""
    best = max(tried, key=lambda t: _judged(t[3]))
    tied = [t for t in tried if t[3]["label_recall"] >= best[3]["label_recall"] - TIE_LABEL_RECALL
            and t[0].patch_stride > best[0].patch_stride]  # fmt: skip
    return max(tied, key=lambda t: (t[0].patch_stride, *_judged(t[3]))) if tied else best


def _judged(fig: dict[str, Any]) -> tuple[float, float]:
    return fig["label_recall"], fig["top1"]


def _concatenated(a: Candidate, b: Candidate, folds: Folds) -> Candidate:
    """One head over both backbones' features, with the output the stronger single head chose (measured only: not
    a bundle layout)."""
    assert a.features is not None and b.features is not None and a.keep is not None and b.keep is not None
    assert a.veto_source is not None and b.veto_source is not None
    x = np.hstack([a.features, b.features])
    keep = a.keep & b.keep
    strong = max((a, b), key=lambda c: _judged(c.figures))
    output = strong.variant.output if strong.variant else OUTPUTS[0]
    oof = cross_validate(x, folds.y, folds.groups, folds.real, folds.fold_of, keep, output)
    unseen = unseen_kind_scores(
        x, folds.y, keep, folds.window_kinds, folds.negative_rows, folds.negative_kinds,
        functools.partial(fit_head, output=output),
    )  # fmt: skip
    return folds.finish(
        "concatenated", (a.name, b.name), a.cost_ms + b.cost_ms, oof, unseen, (a.veto_source, b.veto_source)
    )


def _averaged(first: list[Candidate], second: list[Candidate], folds: Folds) -> list[Candidate]:
    """Both backbones' heads averaged (shippable as a version-2 bundle), for every pair of their output layers, each
    with the weight grouped CV likes best before the veto; each pair then gets its own veto and thresholds."""
    return [_average(a, b, folds) for a in first for b in second]


def _average(a: Candidate, b: Candidate, folds: Folds) -> Candidate:
    assert a.veto_source is not None and b.veto_source is not None
    assert a.plain_oof is not None and b.plain_oof is not None
    assert a.plain_unseen is not None and b.plain_unseen is not None

    def weighted(wa: float) -> np.ndarray:  # the members' scores before their vetoes: the average gets its own
        assert a.plain_oof is not None and b.plain_oof is not None
        return wa * a.plain_oof + (1 - wa) * b.plain_oof

    def score(wa: float) -> tuple[float, float]:  # top-1 (then macro AP): label recall before the raise chose
        # weights that did worse after it (sigmoid pair on ../shared: 0.4 gave 0.697 / unseen 0.128, 0.3 0.704 / 0.094)
        fig = figures(weighted(wa), folds.truth, thresholds_from(weighted(wa), folds.truth), folds.on_clips)
        return fig["top1"], fig["macro_ap"]

    wa = max(AVERAGE_WEIGHTS, key=score)
    return folds.finish(
        f"averaged ({a.name} {wa:.1f})", (a.name, b.name), a.cost_ms + b.cost_ms, weighted(wa),
        wa * a.plain_unseen + (1 - wa) * b.plain_unseen, (a.veto_source, b.veto_source), members=(a, b),
        weights=(wa, round(1 - wa, 6)),
    )  # fmt: skip


def _output_try(c: Candidate) -> dict[str, Any]:
    """One row of the report's output table: which output each member used, and the figures after veto and raise."""
    singles = c.members or (c,)
    return {
        "name": c.name, "outputs": {m.name: m.variant.output for m in singles if m.variant}, "veto": c.veto.label,
        **{k: c.figures[k] for k in ("label_recall", "wrong_label", "false_alarm_other", "false_alarm_unseen", "top1")},
        "min_recall": float(np.nanmin(c.figures["recall"])),
    }  # fmt: skip


def _print_row(*cells: str, fig: dict[str, Any]) -> None:
    print(f"{cells[0]:<12} {cells[1]:<9} {cells[2]:<8} {cells[3]:<6} {cells[4]:<6} {cells[5]:<8} "
          f"{fig['label_recall']:>6.3f} {fig['top1']:>6.3f} {fig['macro_ap']:>9.3f} {fig['false_alarm_other']:>6.3f}",
          flush=True)  # fmt: skip
