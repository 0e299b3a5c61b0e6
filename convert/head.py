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
import itertools
import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.model.bundle import (
    TRAINED_BAND_RATE_HZ,
    Bundle,
    BundleDraft,
    ClassSpec,
    EnsembleDraft,
    HeadSpec,
    MemberDraft,
    ModelSpec,
    TensorSpec,
    sha256_file,
    write_bundle,
)
from custom.daemon.model.frontend import FrontendParams
from custom.daemon.model.head import pool_features
from custom.daemon.model.inference import Model
from custom.wire import exitcodes

from .classes import CLASS_NAMES, URBAN_CLASSES
from .head_backbones import BACKBONES, HeadBackbone, prepare
from .headdata import (
    THIN_CLASSES,
    WINDOW_S,
    BackboneFeatures,
    DataError,
    Examples,
    Recording,
    build_examples,
    load_examples,
    load_waveform,
    read_recordings,
    recording_fold_map,
    save_examples,
)
from .licences import FAMILIES, describe, parse_families
from .metrics import best_f1_threshold, per_class_ap
from .ontology import Ontology
from .openset import (
    UNSEEN_FALSE_ALARM_TARGET,
    Setting,
    cap_false_alarms,
    false_alarm_rate,
    nested_choice_rate,
    nested_unseen_rate,
    unseen_kind_scores,
)
from .thresholds import RULE as LABEL_RULE
from .thresholds import SEEN_FALSE_ALARM_TARGET, label_thresholds
from .veto import VetoChoice, VetoSource, veto_choices, veto_source

HELP = "train a head on YAMNet and/or EfficientAT embeddings from ../shared and write a headed bundle"
CACHE_VERSION = 3  # 2: mix offsets drawn as a fraction (rate-independent); 3: EfficientAT STFT in float32 (scipy)
HEAD_FILE = "head.tflite"
FOLDS = 5
# Pooling variants per backbone: convert/head_backbones.py. For YAMNet, appending its 521 scores lost 2-3 points of
# top-1 in every pooling on ../shared (2026-11-30), so it is no longer tried.
COST_WINDOWS = 5
TIE_TOP1 = 0.01  # top-1 within this of the best (about 3 of 277 clips) is a tie: the cheaper variant is kept
TIE_LABEL_RECALL = 0.01  # label recall within this of the best is a tie: the cheaper per window ships
CHOICE_RULE = (
    "best grouped-CV label recall on the clips (their class among the published labels) among the single-backbone "
    f"heads and the two heads averaged (a version-2 bundle) whose 'other' windows get a label at most "
    f"{SEEN_FALSE_ALARM_TARGET:.0%} of the time (kinds seen in training) and {UNSEEN_FALSE_ALARM_TARGET:.0%} (kinds "
    f"never seen, nested); within {TIE_LABEL_RECALL} of the best, the cheaper per window. One head over both "
    "backbones' concatenated features is measured but not shipped"
)
L2 = 0.1  # weight decay: on ../shared, grouped-CV top-1 0.823 at 0.1 vs 0.805 at 1.0 and 0.751 at 0.01 (mean_max)
THRESHOLD_CEILING = 0.99
THRESHOLD_RULE = (
    f"{LABEL_RULE}; at most {THRESHOLD_CEILING}; then raised where needed so that at most "
    f"{UNSEEN_FALSE_ALARM_TARGET:.0%} of 'other' windows of kinds the head never saw get a label (convert/openset.py)"
)


def _licence_filter(spec: str) -> frozenset[str]:
    try:
        return parse_families(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    parser.add_argument(
        "--ship", default="best", metavar="CANDIDATE",
        help="best (default: the choice rule), or a candidate by name to write regardless: yamnet, efficientat, "
        "averaged (both heads, a version-2 bundle)",
    )  # fmt: skip
    parser.add_argument(
        "--licences", type=_licence_filter, default=frozenset(FAMILIES), metavar="FAMILIES",
        help="train only on rows whose licence is in these families: all (default), or a comma-separated list of "
        f"{', '.join(FAMILIES)} (e.g. permissive: what a commercial deployment may use); the families and licences "
        "of what trained the head are recorded in the manifest",
    )  # fmt: skip
    parser.add_argument("--bundle-id", help="default: <backbone>-head-urban10")
    parser.add_argument("--version", default="2.0.0")


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
    mixtures: dict[str, Any] = field(default_factory=dict)  # label recall under street background (convert/mixtures.py)
    veto_tries: list[dict[str, Any]] = field(default_factory=list)  # the shipped candidate's veto settings tried


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


def window_features(examples: Examples, pooling: str, with_scores: bool, stride: int = 1) -> np.ndarray:
    """Pooled features of every window; `stride` 2 keeps every other patch, exactly the patches a front end with twice
    the patch hop cuts (patch i starts at i x hop), so one feature pass serves both hops."""
    return np.stack(
        [pool_features(e[::stride], s[::stride], pooling, with_scores)
         for e, s in zip(examples.embeddings, examples.scores, strict=True)]
    )  # fmt: skip


def fold_touches(groups: list[tuple[str, ...]], fold_of: dict[str, int]) -> list[np.ndarray]:
    """Per fold, the windows holding any recording of that fold: none of them may train the fold's head."""
    window_fold = [{fold_of[g] for g in gs} for gs in groups]
    return [np.array([fold in f for f in window_fold]) for fold in range(FOLDS)]


def fold_heads(x: np.ndarray, y: np.ndarray, trains: np.ndarray, touches: list[np.ndarray]) -> list[Any]:
    """The head each fold's test windows are scored by, (w, b) per fold."""
    return [fit_linear(x[trains & ~t], y[trains & ~t]) for t in touches]


def cross_validate(
    x: np.ndarray,
    y: np.ndarray,
    groups: list[tuple[str, ...]],
    real: np.ndarray,
    fold_of: dict[str, int],
    trains: np.ndarray,
) -> np.ndarray:
    """Out-of-fold scores of every real window by heads trained on the `trains` windows; a mix trains a fold only if
    none of its recordings is tested in it."""
    oof = np.zeros((int((real >= 0).sum()), y.shape[1]), dtype=np.float32)
    real_rows = np.flatnonzero(real >= 0)
    for fold, touches in enumerate(fold_touches(groups, fold_of)):
        train = trains & ~touches
        w, b = fit_linear(x[train], y[train])
        test = np.array([fold_of[groups[r][0]] == fold for r in real_rows])
        oof[test] = _sigmoid(x[real_rows[test]] @ w + b)
    return oof


def thresholds_from(oof: np.ndarray, truth: np.ndarray) -> list[float]:
    return label_thresholds(oof, truth, THRESHOLD_CEILING)


def figures(
    scores: np.ndarray, truth: np.ndarray, cuts: list[float], on_clips: np.ndarray, exact: np.ndarray | None = None
) -> dict[str, Any]:
    """top-1 and per-class recall/precision (at the thresholds) on the clips; false alarms on 'other' windows.
    `exact`: the clips whose label is exact (not a scene-level proxy), judged apart too: issue 18's own check of
    the shipped bundle counts exact-labelled clips only."""
    extra: dict[str, Any] = {}
    if exact is not None:
        judged = figures(scores, truth, cuts, exact)
        extra = {
            "top1_exact": judged["top1"],
            "top1_recall_exact": judged["top1_recall"],
            "clips_exact": judged["clips"],
        }
    single = on_clips & (truth.sum(axis=1) == 1)
    true_index = truth[single].argmax(axis=1)
    predicted = scores[single].argmax(axis=1)
    named = scores[single].max(axis=1) > 0  # every class vetoed at scale 0: no top class, so never a hit
    hit = (predicted == true_index) & named
    fired = scores >= np.asarray(cuts)
    recall, precision = [], []
    for k in range(truth.shape[1]):
        pos = on_clips & truth[:, k]
        recall.append(float((fired[pos, k]).mean()) if pos.any() else float("nan"))
        sel = on_clips & fired[:, k]
        precision.append(float(truth[sel, k].mean()) if sel.any() else float("nan"))
    of_class = [true_index == k for k in range(truth.shape[1])]
    top1_recall = [float(hit[sel].mean()) if sel.any() else float("nan") for sel in of_class]  # nan: no such clip
    negatives = ~truth.any(axis=1)
    return {
        **label_figures(fired, truth, single),
        "label_recall_all_real": label_figures(fired, truth, truth.sum(axis=1) == 1)["label_recall"],
        "top1": float(hit.mean()),
        "top1_recall": top1_recall,
        "recall": recall,
        "precision": precision,
        "macro_ap": float(np.nanmean(per_class_ap(truth[on_clips], scores[on_clips]))),
        "false_alarm_other": float(fired[negatives].any(axis=1).mean()) if negatives.any() else float("nan"),
        "other_windows": int(negatives.sum()),
        "clips": int(single.sum()),
        "confusion": np.bincount(true_index[named] * truth.shape[1] + predicted[named], minlength=truth.shape[1] ** 2)
        .reshape(truth.shape[1], truth.shape[1])
        .tolist(),
        **extra,
    }


def label_figures(fired: np.ndarray, truth: np.ndarray, judged: np.ndarray) -> dict[str, float]:
    """What a subscriber sees on the `judged` single-label windows: its class among the published labels (label
    recall), a label of another class (wrong label), or no label at all."""
    rows = np.flatnonzero(judged)
    if not len(rows):
        return {"label_recall": float("nan"), "wrong_label": float("nan"), "no_label": float("nan")}
    true_index = truth[rows].argmax(axis=1)
    published = fired[rows]
    own = published[np.arange(len(rows)), true_index]
    other = published.copy()
    other[np.arange(len(rows)), true_index] = False
    return {
        "label_recall": float(own.mean()),
        "wrong_label": float(other.any(axis=1).mean()),
        "no_label": float((~published.any(axis=1)).mean()),
    }


def export_head(w: np.ndarray, b: np.ndarray, mode: str) -> bytes:
    import tensorflow as tf

    from .tflite_export import export_tflite

    # fixed names: Keras numbers unnamed layers per process ("dense_3"), and the names land in the .tflite, so an
    # export after other Keras work would differ byte for byte from the committed head (models/default)
    inputs = tf.keras.Input((w.shape[0],), batch_size=1, name="features")
    dense = tf.keras.layers.Dense(w.shape[1], activation="sigmoid", name="head")
    model = tf.keras.Model(inputs, dense(inputs), name="head")
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


def _head_spec(
    backbone: HeadBackbone, pooling: str, with_scores: bool, dims: int, veto: VetoChoice | None = None
) -> HeadSpec:
    """`veto`: the candidate's; this head carries it if its backbone is one of the veto's sources."""
    model = ModelSpec(HEAD_FILE, TensorSpec((1, dims), "float32"), TensorSpec((1, 10), "float32"), "features")
    spec = veto.spec_for(backbone.name) if veto else None
    return HeadSpec(model, 1, backbone.embedding, pooling, with_scores, CLASS_NAMES, veto=spec)


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
    subset = "" if args.licences == frozenset(FAMILIES) else "-" + describe(args.licences).replace(",", "-")
    cache = None if args.cache is None else args.cache.with_name(f"{args.cache.stem}{subset}.{backbone.name}.npz")
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
    proxies: bool = True  # the scene-level ("proxy") recordings train the head too
    patch_stride: int = 1  # the front end's patch hop times this (YAMNet: 2 = non-overlapping patches, half the cost)
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
    figures: dict[str, Any]  # at `thresholds`
    oof: np.ndarray  # out-of-fold scores of the real windows
    thresholds: list[float]
    unseen: np.ndarray | None = None  # (negatives, classes) scores by heads that never saw the window's kind
    variant: Variant | None = None  # a single backbone's head; None for combinations
    features: np.ndarray | None = None  # (windows, dims) the variant's features, all windows
    keep: np.ndarray | None = None  # which windows train it
    members: tuple[Candidate, ...] = ()  # averaged heads: the single-backbone candidates, with `weights`
    weights: tuple[float, ...] = ()
    veto: VetoChoice = field(default_factory=VetoChoice)  # chosen by the unseen-kind figure (convert/veto.py)
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


def _pick(candidates: list[Candidate], ship: str) -> Candidate:
    if ship == "best":
        return choose_candidate(candidates)
    named = [c for c in candidates if c.name.split()[0] == ship and c.shippable]
    if not named:
        names = ", ".join(c.name.split()[0] for c in candidates if c.shippable)
        raise DataError(f"--ship {ship}: no such shippable candidate in this run ({names})", exitcodes.USAGE)
    return named[0]


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
    folds: _Folds
    probes: dict[str, Model]  # each backbone as the daemon runs it, for windows made after measuring (mixtures)
    ontology: Ontology


def build(args: argparse.Namespace, work: Path) -> tuple[Path, HeadResult]:
    """Train heads on the chosen backbone(s), compare them (and their combinations) by grouped CV, and write the best
    shippable headed bundle to args.out; returns its path and what was measured.

    Raises DataError (one line naming the file, with the exit code) on bad data."""
    started = time.monotonic()
    measured = measure(args, work)
    chosen = _pick(measured.candidates, args.ship)
    bundle = write_and_verify(args, work, measured, chosen)
    result = measured.result
    if getattr(args, "mixtures", False):
        from .mixtures import street_mixtures

        result.mixtures = street_mixtures(measured, chosen, args.seed)
    head, mapping = result.figures["head"], result.figures["mapping"]
    print(
        f"chosen: {chosen.name} {json.dumps(result.chosen)}; grouped-CV top-1 {head['top1']:.3f} (mapping "
        f"{mapping['top1']:.3f}); 'other' windows with a label: seen kinds {head['false_alarm_other']:.3f} "
        f"(mapping {mapping['false_alarm_other']:.3f}), unseen kinds {head['false_alarm_unseen']:.3f}; "
        f"{chosen.cost_ms:.0f} ms/window (YAMNet {result.costs['mapping']:.0f})"
    )
    print("thresholds: " + ", ".join(f"{c.name} {c.threshold:.2f}" for c in bundle.classes))
    print(f"wrote {bundle.path} (bundle sha256 {bundle.sha256[:12]}…, {time.monotonic() - started:.0f} s)")
    return bundle.path, result


@dataclass
class _Folds:
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
        """The candidate at its veto setting (see convert/veto.py): the one whose thresholds, raised until both
        false-alarm budgets hold, publish the most clips' own class (label recall). The unseen-kind rate reported
        chooses the setting nested too (`nested_choice_rate`)."""
        clips = self.on_clips
        tries = []
        for choice in veto_choices(vetoes):
            v_oof, v_unseen = choice.apply(oof, self.real_rows), choice.apply(unseen, self.negative_rows)
            cuts, fig = self._figures(v_oof, v_unseen)
            setting = Setting(thresholds_from(v_oof, self.truth), v_unseen, v_oof[clips])
            tries.append((choice, cuts, fig, setting, v_oof))
        plain = tries[0][2]
        ranked = sorted(tries, key=lambda t: (-t[2]["top1"], len(t[0].sources), -t[0].min_score))  # ties: first
        choice, cuts, chosen_fig, setting, v_oof = max(ranked, key=lambda t: t[2]["label_recall"])  # ties: first
        nested, per_kind = nested_choice_rate(
            [t[3] for t in ranked], self.negative_kinds, UNSEEN_FALSE_ALARM_TARGET, THRESHOLD_CEILING,
            self.truth[clips],
        )  # fmt: skip
        fig = {
            **chosen_fig, "false_alarm_unseen": nested, "false_alarm_unseen_by_kind": per_kind,
            "false_alarm_unseen_fixed_setting": chosen_fig["false_alarm_unseen"], "veto": choice.label,
            "top1_without_veto": plain["top1"], "false_alarm_unseen_without_veto": plain["false_alarm_unseen"],
        }  # fmt: skip
        record = [{"veto": t[0].label, **{k: t[2][k] for k in VETO_SCORED}} for t in tries]
        return Candidate(name, backbones, cost, fig, v_oof, cuts, setting.unseen, veto=choice, veto_tries=record,
                         plain_oof=oof, plain_unseen=unseen, **extra)  # fmt: skip

    def _figures(self, oof: np.ndarray, unseen: np.ndarray) -> tuple[list[float], dict[str, Any]]:
        """Thresholds (grouped-CV rule, then raised for unseen kinds) and the figures at them."""
        base = thresholds_from(oof, self.truth)
        clips = self.on_clips
        cuts = cap_false_alarms(
            base, unseen, UNSEEN_FALSE_ALARM_TARGET, THRESHOLD_CEILING, oof[clips], self.truth[clips]
        )
        fig = figures(oof, self.truth, cuts, clips, self.exact)
        nested, per_kind = nested_unseen_rate(
            base, unseen, self.negative_kinds, UNSEEN_FALSE_ALARM_TARGET, THRESHOLD_CEILING, oof[clips],
            self.truth[clips],
        )  # fmt: skip
        fig.update(
            false_alarm_unseen=nested,
            false_alarm_unseen_by_kind=per_kind,
            false_alarm_unseen_before_raise=false_alarm_rate(unseen, thresholds_from(oof, self.truth)),
        )
        return cuts, fig


def measure(args: argparse.Namespace, work: Path) -> Measured:
    """Features of every window from the daemon's own backbone code, today's mapping and every candidate head, all
    scored out of fold on the same grouped folds, and on negative kinds left out whole."""
    shared = args.shared
    names = BACKBONES if args.backbone == "both" else (args.backbone,)
    recordings, held_out = read_recordings(shared, limit_per_label=args.limit_per_label, licences=args.licences)
    print(f"recordings: {len(recordings)} ({held_out} held-out rows skipped)", flush=True)
    # YAMNet's features are always computed: today's mapping is scored on them in the same run
    backbones = {n: prepare(n, shared, work) for n in ("yamnet", *[n for n in names if n != "yamnet"])}
    ontology = Ontology.load(shared / "data/audioset/ontology.json")
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
    by_group = {r.group: r for r in recordings}
    negatives = np.flatnonzero((real >= 0) & ~y.any(axis=1))
    folds = _Folds(
        y=y, real=real, groups=base.groups,
        fold_of=recording_fold_map([recordings[i].group for i in real[real_rows]], truth, FOLDS, args.seed),
        truth=truth, on_clips=np.array([recordings[i].source == "clips" for i in real[real_rows]]), mixes=real < 0,
        proxy=np.array([any(by_group[g].proxy for g in gs) for gs in base.groups]),
        window_kinds=[frozenset(by_group[g].kind for g in gs) for gs in base.groups],
        negative_rows=negatives, negative_kinds=[recordings[real[r]].kind for r in negatives], real_rows=real_rows,
        exact=np.array([recordings[i].source == "clips" and not recordings[i].proxy for i in real[real_rows]]),
    )  # fmt: skip

    result = HeadResult(truth=truth, held_out_rows=held_out)
    result.source = [recordings[i].source for i in real[real_rows]]
    result.kind = [recordings[i].kind for i in real[real_rows]]
    for rec in recordings:
        label = URBAN_CLASSES[rec.labels[0]].clip_label if rec.labels else "other"
        label += " (proxy)" if rec.proxy else ""
        result.counts.setdefault(label, {}).setdefault(rec.source, 0)
        result.counts[label][rec.source] += 1
    result.counts.setdefault("(augmented mixes)", {})["clips"] = len(base.real) - len(real_rows)

    # today's mapping on the same windows: mean over patches of YAMNet's own scores, class by mid
    mapping = backbones["yamnet"].mapping
    pooled = np.stack([base.scores[r].mean(axis=0) for r in real_rows])
    result.mapping_scores = np.stack([pooled[:, list(idx)].max(axis=1) for idx in mapping], axis=1)
    clip_rows = np.flatnonzero(folds.on_clips)
    # as the yamnet converter ships them: best F1 per class on all clips (optimistic for the mapping)
    result.mapping_thresholds = [best_f1_threshold(truth[clip_rows, k], result.mapping_scores[clip_rows, k]) for k in
                                 range(10)]  # fmt: skip
    mapping_figures = figures(result.mapping_scores, truth, result.mapping_thresholds, folds.on_clips, folds.exact)
    mapping_figures["false_alarm_unseen"] = mapping_figures["false_alarm_other"]  # the mapping learnt no kind
    costs = dict(zip(probes, window_cost_ms(list(probes.values()), recordings), strict=True))

    print(
        f"{'backbone':<12} {'pooling':<9} {'+scores':<8} {'mixes':<6} {'proxy':<6} {'top-1':>6} {'macro AP':>9} "
        f"{'other':>6}   (grouped {FOLDS}-fold CV, {len(clip_rows)} clips)"
    )
    proxies = (True, False) if folds.proxy.any() else (True,)
    candidates: list[Candidate] = []
    for name in names:
        tried: list[tuple[Variant, np.ndarray, np.ndarray, dict[str, Any]]] = []
        tries = itertools.product(backbones[name].variants, proxies, backbones[name].strides)
        for (pooling, with_scores, augmented), with_proxies, stride in tries:
            if augmented and not folds.mixes.any():
                continue  # --augment 0: nothing to try
            variant = Variant(pooling, with_scores, augmented, with_proxies, stride)
            x = window_features(examples[name], pooling, with_scores, stride)
            oof = cross_validate(x, y, base.groups, real, folds.fold_of, folds.trains(variant))
            fig = figures(oof, truth, thresholds_from(oof, truth), folds.on_clips)
            result.variants.append({"backbone": name, **variant.as_dict(), **{k: fig[k] for k in SCORED}})
            _print_row(name, f"{pooling}/{stride}", str(with_scores), str(augmented), str(with_proxies), fig)
            tried.append((variant, x, oof, fig))
        variant, x, oof, _ = _best_variant(tried)
        keep = folds.trains(variant)
        unseen = unseen_kind_scores(x, y, keep, folds.window_kinds, negatives, folds.negative_kinds, fit_linear)
        cost = costs[name] / variant.patch_stride  # the backbone's invokes dominate: half the patches, ~half the time
        pooled = np.stack([s[:: variant.patch_stride].mean(axis=0) for s in examples[name].scores])
        source = veto_source(name, backbones[name].class_map, ontology, pooled)
        candidates.append(folds.finish(name, (name,), cost, oof, unseen, (source,), variant=variant, features=x,
                                       keep=keep, veto_source=source))  # fmt: skip
    if len(candidates) == 2:
        candidates += _combinations(candidates, folds, y, base.groups, real)

    print(f"{'candidate':<28} {'labels':>6} {'wrong':>6} {'top-1':>6} {'macro AP':>9} {'other: seen':>12} "
          f"{'unseen':>7} {'before raise':>13}  veto")  # fmt: skip
    for c in candidates:
        f = c.figures
        print(f"{c.name:<28} {f['label_recall']:>6.3f} {f['wrong_label']:>6.3f} {f['top1']:>6.3f} "
              f"{f['macro_ap']:>9.3f} {f['false_alarm_other']:>12.3f} {f['false_alarm_unseen']:>7.3f} "
              f"{f['false_alarm_unseen_before_raise']:>13.3f}  {c.veto.label}", flush=True)  # fmt: skip
    result.candidates = [c.record() for c in candidates]
    result.costs = {"mapping": costs["yamnet"], **{c.name: c.cost_ms for c in candidates}}
    result.figures = {"mapping": mapping_figures}
    return Measured(recordings, backbones, examples, y, real_rows, candidates, result, folds, probes, ontology)


SCORED = ("top1", "macro_ap", "false_alarm_other", "top1_recall")


VETO_SCORED = (
    "top1", "label_recall", "wrong_label", "false_alarm_other", "false_alarm_unseen", "false_alarm_unseen_before_raise",
    "top1_recall", "recall",
)  # fmt: skip


def _best_variant(
    tried: list[tuple[Variant, np.ndarray, np.ndarray, dict[str, Any]]],
) -> tuple[Variant, np.ndarray, np.ndarray, dict[str, Any]]:
    """Best grouped-CV top-1 (then macro AP); within TIE_TOP1 of it, the largest patch stride (the cheapest)."""
    best = max(tried, key=lambda t: (t[3]["top1"], t[3]["macro_ap"]))
    tied = [t for t in tried if t[3]["top1"] >= best[3]["top1"] - TIE_TOP1 and t[0].patch_stride > best[0].patch_stride]
    return max(tied, key=lambda t: (t[0].patch_stride, t[3]["top1"], t[3]["macro_ap"])) if tied else best


AVERAGE_WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the first member's share, tried by grouped CV


def _combinations(
    singles: list[Candidate], folds: _Folds, y: np.ndarray, groups: list[tuple[str, ...]], real: np.ndarray
) -> list[Candidate]:
    """Both backbones: one head over their concatenated features (measured), and their two heads averaged with the
    weight grouped CV likes best (shippable as a version-2 bundle)."""
    a, b = singles
    assert a.features is not None and b.features is not None and a.keep is not None and b.keep is not None
    assert a.veto_source is not None and b.veto_source is not None
    assert a.plain_oof is not None and b.plain_oof is not None
    assert a.plain_unseen is not None and b.plain_unseen is not None
    both, cost, sources = (a.name, b.name), a.cost_ms + b.cost_ms, (a.veto_source, b.veto_source)
    x = np.hstack([a.features, b.features])
    keep = a.keep & b.keep
    oof = cross_validate(x, y, groups, real, folds.fold_of, keep)
    unseen = unseen_kind_scores(x, y, keep, folds.window_kinds, folds.negative_rows, folds.negative_kinds, fit_linear)
    concatenated = folds.finish("concatenated", both, cost, oof, unseen, sources)

    def weighted(wa: float) -> np.ndarray:  # the members' scores before their vetoes: the average gets its own
        assert a.plain_oof is not None and b.plain_oof is not None
        return wa * a.plain_oof + (1 - wa) * b.plain_oof

    def score(wa: float) -> tuple[float, float]:
        fig = figures(weighted(wa), folds.truth, thresholds_from(weighted(wa), folds.truth), folds.on_clips)
        return fig["top1"], fig["macro_ap"]

    wa = max(AVERAGE_WEIGHTS, key=score)
    averaged = folds.finish(
        f"averaged ({a.name} {wa:.1f})", both, cost, weighted(wa), wa * a.plain_unseen + (1 - wa) * b.plain_unseen,
        sources, members=(a, b), weights=(wa, round(1 - wa, 6)),
    )  # fmt: skip
    return [concatenated, averaged]


def _print_row(name: str, pooling: str, with_scores: str, augmented: str, proxies: str, fig: dict[str, Any]) -> None:
    print(f"{name:<12} {pooling:<9} {with_scores:<8} {augmented:<6} {proxies:<6} {fig['top1']:>6.3f} "
          f"{fig['macro_ap']:>9.3f} {fig['false_alarm_other']:>6.3f}", flush=True)  # fmt: skip


def write_and_verify(args: argparse.Namespace, work: Path, measured: Measured, chosen: Candidate) -> Bundle:
    """Fit the chosen head(s) on every window they train on, export, write the bundle (version 2 for averaged
    heads) with its provenance, then load the written bundle and check each head against its numpy fit."""
    result = measured.result
    singles = chosen.members or (chosen,)
    result.head_oof = chosen.oof
    result.chosen_name = chosen.name
    result.thresholds = chosen.thresholds
    result.veto_tries = chosen.veto_tries
    result.chosen = {c.name: c.variant.as_dict() for c in singles if c.variant is not None}
    if chosen.members:
        result.chosen["weights"] = dict(zip(chosen.backbones, chosen.weights, strict=True))
    result.figures["head"] = chosen.figures
    fits = {}
    sources: dict[str, Path] = {}
    for single in singles:
        assert single.features is not None and single.keep is not None and single.variant is not None
        backbone = _strided(measured.backbones[single.name], single.variant)
        w, b = fit_linear(single.features[single.keep], measured.y[single.keep])
        fits[single.name] = (w, b)
        head_file = HEAD_FILE if not chosen.members else f"head_{single.name}.tflite"
        (work / head_file).write_bytes(export_head(w, b, args.quantize))
        sources |= {backbone.model_file: backbone.path, head_file: work / head_file}
    provenance = _provenance(args, [measured.backbones[c.name] for c in singles], measured)
    strides = {c.name: c.variant.patch_stride if c.variant else 1 for c in singles}
    draft: BundleDraft | EnsembleDraft
    if chosen.members:
        draft = _ensemble_draft(args, chosen, measured, sources, provenance)
    else:
        assert chosen.variant is not None and chosen.features is not None
        backbone = _strided(measured.backbones[chosen.name], chosen.variant)
        head = _head_spec(
            backbone, chosen.variant.pooling, chosen.variant.with_scores, chosen.features.shape[1], chosen.veto
        )
        draft = _draft(args, backbone, head, sources, chosen.thresholds, provenance)
    bundle = write_bundle(draft, args.out)
    models = [Model(m) for m in bundle.members] if bundle.members else [Model(bundle)]
    check_rows = measured.real_rows[:: max(1, len(measured.real_rows) // 20)]
    worst = 0.0
    for single, model in zip(singles, models, strict=True):  # each written head agrees with its numpy fit
        assert single.features is not None
        ex, (w, b), n = measured.examples[single.name], fits[single.name], strides[single.name]
        got = np.stack([model.class_scores(np.hstack([ex.scores[r][::n], ex.embeddings[r][::n]])) for r in check_rows])
        worst = max(worst, float(np.abs(got - _sigmoid(single.features[check_rows] @ w + b)).max()))
    if worst > 0.02:
        raise RuntimeError(f"exported head disagrees with its fit by {worst:.4f}")
    print(f"head TFLite ({args.quantize}) vs float fit: max |difference| {worst:.5f} on {len(check_rows)} windows")
    return bundle


def _strided(backbone: HeadBackbone, variant: Variant) -> HeadBackbone:
    """The backbone as the variant runs it: its front end's patch hop times the variant's stride."""
    if variant.patch_stride == 1 or not isinstance(backbone.frontend, FrontendParams):
        return backbone
    hop = backbone.frontend.patch_hop_frames * variant.patch_stride
    return dataclasses.replace(backbone, frontend=dataclasses.replace(backbone.frontend, patch_hop_frames=hop))


def _ensemble_draft(
    args: argparse.Namespace, chosen: Candidate, measured: Measured, sources: dict[str, Path],
    provenance: dict[str, Any],
) -> EnsembleDraft:  # fmt: skip
    members = []
    for single, weight in zip(chosen.members, chosen.weights, strict=True):
        assert single.variant is not None and single.features is not None
        backbone = _strided(measured.backbones[single.name], single.variant)
        spec = _head_spec(
            backbone, single.variant.pooling, single.variant.with_scores, single.features.shape[1], chosen.veto
        )
        spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, file=f"head_{single.name}.tflite"))
        members.append(MemberDraft(backbone.name, backbone.frontend, backbone.spec, spec, weight))
    return EnsembleDraft(
        bundle_id=args.bundle_id or "-".join(chosen.backbones) + "-heads-urban10",
        version=args.version,
        members=members,
        classes=[
            ClassSpec(c.name, c.audioset_name, c.mid, t) for c, t in zip(URBAN_CLASSES, chosen.thresholds, strict=True)
        ],  # fmt: skip
        sources=sources,
        band_rate_hz=TRAINED_BAND_RATE_HZ,
        window_s=WINDOW_S,
        provenance=provenance,
    )


def _provenance(args: argparse.Namespace, backbones: list[HeadBackbone], measured: Measured) -> dict[str, Any]:
    result = measured.result

    def summary(fig: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in fig.items() if k != "confusion"}

    sources: dict[str, Any] = {b.name: b.provenance for b in backbones}
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": "custom-convert head",
        **(backbones[0].provenance if len(backbones) == 1 else {"backbones": sources}),
        "training": {
            "recordings": len(measured.recordings),
            "held_out_rows_skipped": result.held_out_rows,
            "augment_per_thin_clip": args.augment,
            "seed": args.seed,
            "counts": result.counts,
            "licences": training_licences(measured.recordings, args.licences),
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


def training_licences(recordings: list[Recording], families: frozenset[str]) -> dict[str, Any]:
    """The filter and what trained the head, by licence family and by the manifests' own licence text: a city that
    distributes the model reads its terms here."""
    by_family: dict[str, int] = {f: 0 for f in FAMILIES}
    by_text: dict[str, int] = {}
    for r in recordings:
        by_family[r.licence_family] += 1
        by_text[r.licence or "(none given)"] = by_text.get(r.licence or "(none given)", 0) + 1
    return {
        "filter": describe(families),
        "recordings_by_family": by_family,
        "recordings_by_licence": dict(sorted(by_text.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build(args, Path(tmp))
        except DataError as exc:
            print(f"custom-convert head: {exc}")
            return exc.code
    return exitcodes.OK
