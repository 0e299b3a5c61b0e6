"""`custom-convert head`: train a classifier head on backbone embeddings (YAMNet, EfficientAT mn04, or both compared)
from the real recordings in ../shared and write the best headed bundle.

Steps: expose each backbone's embedding as a second output (convert/head_backbones.py), run every training
recording (and seeded, label-honest mixes of the thin classes) through the bundle's own backbone code, choose the
pooling and features by cross-validation grouped by source recording, set per-class thresholds from the
out-of-fold scores, then fit on everything and export a linear sigmoid head (features -> 10 scores) to TFLite.
Every figure printed or stored comes from out-of-fold scores: no window is scored by a head that trained on its
recording. The same run scores today's class mapping (YAMNet's own scores, mean over the window) on the same
windows, so the two can be compared honestly. With both backbones, their concatenated features and their averaged
heads are measured too (same folds, same thresholds rule) and every candidate's cost per window is timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon import exitcodes
from custom.daemon.model.bundle import (
    Bundle,
    BundleDraft,
    ClassSpec,
    HeadSpec,
    ModelSpec,
    TensorSpec,
    sha256_file,
    write_bundle,
)
from custom.daemon.model.head import pool_features
from custom.daemon.model.inference import Model

from .classes import CLASS_NAMES, URBAN_CLASSES
from .head_backbones import BACKBONES, HeadBackbone, prepare
from .headdata import (
    THIN_CLASSES,
    BackboneFeatures,
    DataError,
    Examples,
    build_examples,
    load_examples,
    load_waveform,
    read_recordings,
    recording_fold_map,
    save_examples,
)
from .metrics import best_f1_threshold, per_class_ap

HELP = "train a head on YAMNet and/or EfficientAT embeddings from ../shared and write a headed bundle"
CACHE_VERSION = 2  # 2: mix offsets drawn as a fraction (rate-independent)
HEAD_FILE = "head.tflite"
FOLDS = 5
# Pooling variants per backbone: convert/head_backbones.py. For YAMNet, appending its 521 scores lost 2-3 points of
# top-1 in every pooling on ../shared (2026-11-30), so it is no longer tried.
COST_WINDOWS = 5
TIE_TOP1 = 0.01  # top-1 within this of the best (about 3 of 277 clips) is a tie: the cheaper per window ships
CHOICE_RULE = (
    f"best grouped-CV top-1 among single-backbone heads; within {TIE_TOP1} of the best, the cheaper per window. "
    "Combinations of both backbones are measured but not shipped (a bundle carries one backbone)"
)
L2 = 0.1  # weight decay: on ../shared, grouped-CV top-1 0.823 at 0.1 vs 0.805 at 1.0 and 0.751 at 0.01 (mean_max)
FALSE_ALARM_QUANTILE = 0.995  # a class's threshold is at least this quantile of its out-of-fold "other" scores
THRESHOLD_CEILING = 0.99
THRESHOLD_RULE = (
    "per class: best F1 on out-of-fold scores of the real windows (grouped CV), raised to at least the "
    f"{FALSE_ALARM_QUANTILE:.1%} quantile of that class's out-of-fold scores on 'other' recordings; "
    f"clamped to 0.05..{THRESHOLD_CEILING}"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shared", type=Path, default=Path("../shared"), help="folder laid out like ../shared")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced atomically)")
    parser.add_argument("--augment", type=int, default=4, help="mixes per thin-class recording (default 4)")
    parser.add_argument("--limit-per-label", type=int, help="at most N recordings per label (quick builds in tests)")
    parser.add_argument("--quantize", choices=("float32", "float16"), default="float16", help="head weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", type=Path, help="X.npz: features kept in X.<backbone>.npz (outside git), reused if data match"
    )
    parser.add_argument(
        "--backbone", choices=(*BACKBONES, "both"), default="both",
        help="train on this backbone's embedding; both: compare them and their combinations, ship the best",
    )  # fmt: skip
    parser.add_argument("--bundle-id", help="default: <backbone>-head-urban10")
    parser.add_argument("--version", default="2.0.0")


@dataclass
class HeadResult:
    """What a head build measured, for the summary, the manifest provenance, default-bundle and the report."""

    variants: list[dict[str, Any]] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)
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


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def fit_linear(x: np.ndarray, y: np.ndarray, l2: float = L2) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label logistic regression on standardised features (L-BFGS, deterministic); weights folded back so
    that sigmoid(x @ w + b) works on raw features. Positives are up-weighted by sqrt(negatives/positives)."""
    from scipy.optimize import minimize

    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    n, d = z.shape
    pos = y.sum(axis=0)
    weight = np.where(y, np.sqrt(np.maximum(1.0, n - pos) / np.maximum(1.0, pos)), 1.0)  # (n, classes)
    k = y.shape[1]

    def loss(flat: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = flat[: d * k].reshape(d, k), flat[d * k :]
        p = _sigmoid(z @ w + b)
        eps = 1e-7
        value = -np.sum(weight * (y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))) / n
        value += 0.5 * l2 * np.sum(w * w)
        g = weight * (p - y) / n
        return value, np.concatenate([(z.T @ g + l2 * w).ravel(), g.sum(axis=0)])

    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small matrices: BLAS threads only fight each other (and other work) for cores
        result = minimize(loss, np.zeros(d * k + k), jac=True, method="L-BFGS-B", options={"maxiter": 300})
    w, b = result.x[: d * k].reshape(d, k), result.x[d * k :]
    w_raw = w / std[:, None]
    return w_raw.astype(np.float32), (b - mean @ w_raw).astype(np.float32)


def window_features(examples: Examples, pooling: str, with_scores: bool) -> np.ndarray:
    return np.stack(
        [pool_features(e, s, pooling, with_scores) for e, s in zip(examples.embeddings, examples.scores, strict=True)]
    )


def cross_validate(
    x: np.ndarray, y: np.ndarray, groups: list[tuple[str, ...]], real: np.ndarray, fold_of: dict[str, int]
) -> np.ndarray:
    """Out-of-fold scores of the real windows; a mix trains a fold only if none of its recordings is tested in it."""
    oof = np.zeros((int((real >= 0).sum()), y.shape[1]), dtype=np.float32)
    real_rows = np.flatnonzero(real >= 0)
    window_fold = np.array([[fold_of[g] for g in gs] for gs in groups], dtype=object)
    for fold in range(FOLDS):
        touches = np.array([fold in f for f in window_fold])
        train = ~touches
        w, b = fit_linear(x[train], y[train])
        test = np.array([fold_of[groups[r][0]] == fold for r in real_rows])
        oof[test] = _sigmoid(x[real_rows[test]] @ w + b)
    return oof


def thresholds_from(oof: np.ndarray, truth: np.ndarray) -> list[float]:
    negatives = ~truth.any(axis=1)
    cuts = []
    for k in range(truth.shape[1]):
        cut = best_f1_threshold(truth[:, k], oof[:, k], ceiling=THRESHOLD_CEILING)
        if negatives.any():
            cut = max(cut, float(np.quantile(oof[negatives, k], FALSE_ALARM_QUANTILE)) + 1e-6)
        cuts.append(float(np.clip(cut, 0.05, THRESHOLD_CEILING)))
    return cuts


def figures(scores: np.ndarray, truth: np.ndarray, cuts: list[float], on_clips: np.ndarray) -> dict[str, Any]:
    """top-1 and per-class recall/precision (at the thresholds) on the clips; false alarms on 'other' windows."""
    single = on_clips & (truth.sum(axis=1) == 1)
    true_index = truth[single].argmax(axis=1)
    predicted = scores[single].argmax(axis=1)
    fired = scores >= np.asarray(cuts)
    recall, precision = [], []
    for k in range(truth.shape[1]):
        pos = on_clips & truth[:, k]
        recall.append(float((fired[pos, k]).mean()) if pos.any() else float("nan"))
        sel = on_clips & fired[:, k]
        precision.append(float(truth[sel, k].mean()) if sel.any() else float("nan"))
    top1_recall = [float((predicted[true_index == k] == k).mean()) for k in range(truth.shape[1])]
    negatives = ~truth.any(axis=1)
    return {
        "top1": float((predicted == true_index).mean()),
        "top1_recall": top1_recall,
        "recall": recall,
        "precision": precision,
        "macro_ap": float(np.nanmean(per_class_ap(truth[on_clips], scores[on_clips]))),
        "false_alarm_other": float(fired[negatives].any(axis=1).mean()) if negatives.any() else float("nan"),
        "other_windows": int(negatives.sum()),
        "clips": int(single.sum()),
        "confusion": np.bincount(true_index * truth.shape[1] + predicted, minlength=truth.shape[1] ** 2)
        .reshape(truth.shape[1], truth.shape[1])
        .tolist(),
    }


def export_head(w: np.ndarray, b: np.ndarray, mode: str) -> bytes:
    import tensorflow as tf

    from .tflite_export import export_tflite

    inputs = tf.keras.Input((w.shape[0],), batch_size=1)
    dense = tf.keras.layers.Dense(w.shape[1], activation="sigmoid")
    model = tf.keras.Model(inputs, dense(inputs))
    dense.set_weights([w, b])
    return export_tflite(model, (1, w.shape[0]), mode)


def _draft(args, backbone: HeadBackbone, head: HeadSpec, sources: dict[str, Path], cuts, provenance) -> BundleDraft:
    return BundleDraft(
        bundle_id=args.bundle_id or f"{backbone.name}-head-urban10",
        version=args.version,
        backbone=backbone.name,
        frontend=backbone.frontend,
        backbone_model=backbone.spec,
        classes=[
            ClassSpec(c.name, c.audioset_name, c.mid, t, idx)
            for c, t, idx in zip(URBAN_CLASSES, cuts, backbone.mapping, strict=True)
        ],
        sources=sources,
        aggregation="mean",
        provenance=provenance,
        head=head,
    )


def _head_spec(backbone: HeadBackbone, pooling: str, with_scores: bool, dims: int) -> HeadSpec:
    model = ModelSpec(HEAD_FILE, TensorSpec((1, dims), "float32"), TensorSpec((1, 10), "float32"), "features")
    return HeadSpec(model, 1, backbone.embedding, pooling, with_scores, CLASS_NAMES)


def _probe(args, backbone: HeadBackbone, work: Path) -> Model:
    """A bundle with an untrained head, so features come from the daemon's own backbone code path."""
    folder = work / f"probe-{backbone.name}"
    folder.mkdir(parents=True, exist_ok=True)
    dims = backbone.embedding_dims
    head = folder / HEAD_FILE
    head.write_bytes(export_head(np.zeros((dims, 10), np.float32), np.zeros(10, np.float32), "float32"))
    draft = _draft(
        args, backbone, _head_spec(backbone, "mean", False, dims), {backbone.model_file: backbone.path,
        HEAD_FILE: head}, [0.5] * 10, {},
    )  # fmt: skip
    return Model(write_bundle(draft, folder / "bundle"))


def _examples(args, backbone: HeadBackbone, probe: Model, recordings, shared: Path) -> Examples:
    from tqdm import tqdm

    thin = sum(1 for r in recordings if r.source == "clips" and r.labels and URBAN_CLASSES[r.labels[0]].clip_label in
               THIN_CLASSES)  # fmt: skip
    key = json.dumps(
        {
            "backbone": sha256_file(backbone.path),
            "manifests": [
                sha256_file(shared / m) for m in ("data/train-audio/manifest.csv", "data/clips/manifest.csv")
            ],
            "recordings": len(recordings),
            "augment": args.augment,
            "seed": args.seed,
            "version": CACHE_VERSION,
        },
        sort_keys=True,
    )
    cache = None if args.cache is None else args.cache.with_name(f"{args.cache.stem}.{backbone.name}.npz")
    examples = load_examples(cache, key) if cache is not None else None
    if examples is not None:
        print(f"{backbone.name} features: {len(examples.real)} windows from {cache}")
        return examples
    total = len(recordings) + thin * args.augment
    with tqdm(total=total, desc=f"{backbone.name} windows", unit="win", disable=None, mininterval=5) as bar:
        examples = build_examples(
            recordings, BackboneFeatures(probe), augment_per_clip=args.augment, seed=args.seed,
            rate_hz=backbone.rate_hz, progress=bar.update,
        )  # fmt: skip
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_examples(cache, examples, key)
    return examples


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


@dataclass(frozen=True)
class Variant:
    """How one backbone's window features are made and trained."""

    pooling: str
    with_scores: bool
    augmented: bool  # the thin classes' seeded mixes train the head too
    l2: float = L2

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Candidate:
    """One head compared by grouped CV: a backbone's best variant, or a combination of both backbones (measured,
    never shipped: a bundle carries one backbone)."""

    name: str
    backbones: tuple[str, ...]
    cost_ms: float
    figures: dict[str, Any]
    oof: np.ndarray  # out-of-fold scores of the real windows
    variant: Variant | None = None  # None for the combinations
    features: np.ndarray | None = None  # (windows, dims) the variant's features, all windows; None: not shippable
    keep: np.ndarray | None = None  # which windows train it (mixes or not)

    @property
    def shippable(self) -> bool:
        return self.variant is not None and self.features is not None

    def record(self, truth: np.ndarray) -> dict[str, Any]:
        """Plain figures for the manifest provenance, default-bundle's decision and the report."""
        return {
            "name": self.name, "backbones": list(self.backbones), "shippable": self.shippable,
            "cost_ms": self.cost_ms, "variant": self.variant.as_dict() if self.variant else {},
            "figures": self.figures, "thresholds": thresholds_from(self.oof, truth),
        }  # fmt: skip


def choose_candidate(candidates: list[Candidate]) -> Candidate:
    """The shippable candidate with the best grouped-CV top-1; within TIE_TOP1 of the best, the cheapest per window."""
    shippable = [c for c in candidates if c.shippable]
    best = max(c.figures["top1"] for c in shippable)
    tied = [c for c in shippable if c.figures["top1"] >= best - TIE_TOP1]
    return min(tied, key=lambda c: (c.cost_ms, -c.figures["top1"]))


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


def build(args: argparse.Namespace, work: Path) -> tuple[Path, HeadResult]:
    """Train heads on the chosen backbone(s), compare them (and their combinations) by grouped CV, and write the best
    shippable headed bundle to args.out; returns its path and what was measured.

    Raises DataError (one line naming the file, with the exit code) on bad data."""
    started = time.monotonic()
    measured = measure(args, work)
    chosen = choose_candidate(measured.candidates)
    bundle = write_and_verify(args, work, measured, chosen)
    result = measured.result
    head, mapping = result.figures["head"], result.figures["mapping"]
    assert chosen.variant is not None
    print(
        f"chosen: {chosen.name} pooling={chosen.variant.pooling} with_scores={chosen.variant.with_scores} "
        f"mixes={chosen.variant.augmented}; grouped-CV top-1 {head['top1']:.3f} (mapping {mapping['top1']:.3f}), "
        f"'other' windows with a label {head['false_alarm_other']:.3f} (mapping {mapping['false_alarm_other']:.3f}), "
        f"{chosen.cost_ms:.0f} ms/window (YAMNet {result.costs['mapping']:.0f})"
    )
    print("thresholds: " + ", ".join(f"{c.name} {c.threshold:.2f}" for c in bundle.classes))
    print(f"wrote {bundle.path} (bundle sha256 {bundle.sha256[:12]}…, {time.monotonic() - started:.0f} s)")
    return bundle.path, result


def measure(args: argparse.Namespace, work: Path) -> Measured:
    """Features of every window from the daemon's own backbone code, today's mapping and every candidate head, all
    scored out of fold on the same grouped folds."""
    shared = args.shared
    names = BACKBONES if args.backbone == "both" else (args.backbone,)
    recordings, held_out = read_recordings(shared, limit_per_label=args.limit_per_label)
    print(f"recordings: {len(recordings)} ({held_out} held-out rows skipped)", flush=True)
    # YAMNet's features are always computed: today's mapping is scored on them in the same run
    backbones = {n: prepare(n, shared, work) for n in ("yamnet", *[n for n in names if n != "yamnet"])}
    probes = {n: _probe(args, b, work) for n, b in backbones.items()}
    examples = {n: _examples(args, b, probes[n], recordings, shared) for n, b in backbones.items()}
    base = examples["yamnet"]
    for n, ex in examples.items():
        if ex.groups != base.groups or not np.array_equal(np.stack(ex.labels), np.stack(base.labels)):
            raise RuntimeError(f"{n} windows do not line up with YAMNet's (same seed must give the same mixes)")
    y = np.stack(base.labels)
    real = np.asarray(base.real)
    real_rows = np.flatnonzero(real >= 0)
    truth = y[real_rows]
    fold_of = recording_fold_map([recordings[i].group for i in real[real_rows]], truth, FOLDS, args.seed)
    on_clips = np.array([recordings[i].source == "clips" for i in real[real_rows]])

    result = HeadResult(truth=truth, held_out_rows=held_out)
    result.source = [recordings[i].source for i in real[real_rows]]
    result.kind = [recordings[i].kind for i in real[real_rows]]
    for rec in recordings:
        label = URBAN_CLASSES[rec.labels[0]].clip_label if rec.labels else "other"
        result.counts.setdefault(label, {}).setdefault(rec.source, 0)
        result.counts[label][rec.source] += 1
    result.counts.setdefault("(augmented mixes)", {})["clips"] = len(base.real) - len(real_rows)

    # today's mapping on the same windows: mean over patches of YAMNet's own scores, class by mid
    mapping = backbones["yamnet"].mapping
    pooled = np.stack([base.scores[r].mean(axis=0) for r in real_rows])
    result.mapping_scores = np.stack([pooled[:, list(idx)].max(axis=1) for idx in mapping], axis=1)
    clip_rows = np.flatnonzero(on_clips)
    # as the yamnet converter ships them: best F1 per class on all clips (optimistic for the mapping)
    result.mapping_thresholds = [best_f1_threshold(truth[clip_rows, k], result.mapping_scores[clip_rows, k]) for k in
                                 range(10)]  # fmt: skip
    mapping_figures = figures(result.mapping_scores, truth, result.mapping_thresholds, on_clips)
    costs = dict(zip(probes, window_cost_ms(list(probes.values()), recordings), strict=True))
    mixes = real < 0

    def evaluate(x: np.ndarray, augmented: bool) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
        keep = np.ones(len(real), dtype=bool) if augmented else ~mixes
        kept_groups = [base.groups[i] for i in np.flatnonzero(keep)]
        oof = cross_validate(x[keep], y[keep], kept_groups, real[keep], fold_of)
        return oof, figures(oof, truth, thresholds_from(oof, truth), on_clips), keep

    print(
        f"{'backbone':<12} {'pooling':<9} {'+scores':<8} {'mixes':<6} {'top-1':>6} {'macro AP':>9} {'other':>6}"
        f"   (grouped {FOLDS}-fold CV, {len(clip_rows)} clips)"
    )
    candidates: list[Candidate] = []
    for name in names:
        best: Candidate | None = None
        for pooling, with_scores, augmented in backbones[name].variants:
            if augmented and not mixes.any():
                continue  # --augment 0: nothing to try
            variant = Variant(pooling, with_scores, augmented)
            x = window_features(examples[name], pooling, with_scores)
            oof, fig, keep = evaluate(x, augmented)
            scored = {k: fig[k] for k in ("top1", "macro_ap", "false_alarm_other")}
            result.variants.append({"backbone": name, **variant.as_dict(), **scored})
            _print_row(name, pooling, str(with_scores), str(augmented), fig)
            if best is None or (fig["top1"], fig["macro_ap"]) > (best.figures["top1"], best.figures["macro_ap"]):
                best = Candidate(name, (name,), costs[name], fig, oof, variant, x, keep)
        assert best is not None
        candidates.append(best)
    if len(candidates) == 2:
        a, b = candidates
        assert a.variant is not None and b.variant is not None and a.features is not None and b.features is not None
        both, combined_cost = (a.name, b.name), a.cost_ms + b.cost_ms
        augmented = a.variant.augmented or b.variant.augmented
        oof, fig, _ = evaluate(np.hstack([a.features, b.features]), augmented)
        _print_row("concat", "", "", str(augmented), fig)
        candidates.append(Candidate("concatenated", both, combined_cost, fig, oof))
        oof = (a.oof + b.oof) / 2
        fig = figures(oof, truth, thresholds_from(oof, truth), on_clips)
        _print_row("averaged", "", "", "", fig)
        candidates.append(Candidate("averaged", both, combined_cost, fig, oof))

    result.candidates = [c.record(truth) for c in candidates]
    result.costs = {"mapping": costs["yamnet"], **{c.name: c.cost_ms for c in candidates}}
    result.figures = {"mapping": mapping_figures}
    return Measured(recordings, backbones, examples, y, real_rows, candidates, result)


def _print_row(name: str, pooling: str, with_scores: str, augmented: str, fig: dict[str, Any]) -> None:
    print(f"{name:<12} {pooling:<9} {with_scores:<8} {augmented:<6} {fig['top1']:>6.3f} {fig['macro_ap']:>9.3f} "
          f"{fig['false_alarm_other']:>6.3f}", flush=True)  # fmt: skip


def write_and_verify(args: argparse.Namespace, work: Path, measured: Measured, chosen: Candidate) -> Bundle:
    """Fit the chosen head on every window it trains on, export it, write the bundle with its provenance, then load
    the written bundle and check its head against the numpy fit."""
    result, truth = measured.result, measured.result.truth
    assert chosen.variant is not None and chosen.features is not None and chosen.keep is not None
    assert truth is not None
    backbone = measured.backbones[chosen.name]
    result.head_oof = chosen.oof
    result.thresholds = thresholds_from(chosen.oof, truth)
    result.chosen = {"backbone": chosen.name, **chosen.variant.as_dict()}
    result.figures["head"] = chosen.figures
    x, y = chosen.features, measured.y
    w, b = fit_linear(x[chosen.keep], y[chosen.keep])
    head_path = work / HEAD_FILE
    head_path.write_bytes(export_head(w, b, args.quantize))
    bundle = write_bundle(
        _draft(
            args,
            backbone,
            _head_spec(backbone, chosen.variant.pooling, chosen.variant.with_scores, x.shape[1]),
            {backbone.model_file: backbone.path, HEAD_FILE: head_path},
            result.thresholds,
            _provenance(args, backbone, measured),
        ),
        args.out,
    )
    model = Model(bundle)  # the written bundle loads, and its head agrees with the numpy fit
    ex = measured.examples[chosen.name]
    check_rows = measured.real_rows[:: max(1, len(measured.real_rows) // 20)]
    got = np.stack([model.class_scores(np.hstack([ex.scores[r], ex.embeddings[r]])) for r in check_rows])
    worst = float(np.abs(got - _sigmoid(x[check_rows] @ w + b)).max())
    if worst > 0.02:
        raise RuntimeError(f"exported head disagrees with its fit by {worst:.4f}")
    print(f"head TFLite ({args.quantize}) vs float fit: max |difference| {worst:.5f} on {len(check_rows)} windows")
    return bundle


def _provenance(args: argparse.Namespace, backbone: HeadBackbone, measured: Measured) -> dict[str, Any]:
    result = measured.result

    def summary(fig: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in fig.items() if k != "confusion"}

    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": "custom-convert head",
        **backbone.provenance,
        "training": {
            "recordings": len(measured.recordings),
            "held_out_rows_skipped": result.held_out_rows,
            "augment_per_thin_clip": args.augment,
            "seed": args.seed,
            "counts": result.counts,
            "head": f"linear sigmoid, L2 {L2}, {args.quantize}",
        },
        "thresholds": {"rule": THRESHOLD_RULE, "folds": f"{FOLDS}, grouped by source_recording"},
        "cross_validated": {
            "variants": result.variants,
            "chosen": result.chosen,
            "choice_rule": CHOICE_RULE,
            "candidates": [
                {k: c[k] for k in ("name", "shippable", "variant")}
                | {"cost_ms": round(c["cost_ms"], 1)}
                | summary(c["figures"])
                for c in result.candidates
            ],  # fmt: skip
            "head": summary(result.figures["head"]),
            "mapping": {**summary(result.figures["mapping"]), "cost_ms": round(result.costs["mapping"], 1)},
        },
    }


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build(args, Path(tmp))
        except DataError as exc:
            print(f"custom-convert head: {exc}")
            return exc.code
    return exitcodes.OK
