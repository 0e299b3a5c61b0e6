"""`custom-convert head`: train a classifier head on YAMNet's patch embeddings from the real recordings in ../shared
and write a headed YAMNet bundle.

Steps: expose YAMNet's 1024-d embedding as a second output (convert/tflite_outputs.py), run every training
recording (and seeded, label-honest mixes of the thin classes) through the bundle's own backbone code, choose the
pooling and features by cross-validation grouped by source recording, set per-class thresholds from the
out-of-fold scores, then fit on everything and export a linear sigmoid head (features -> 10 scores) to TFLite.
Every figure printed or stored comes from out-of-fold scores: no window is scored by a head that trained on its
recording. The same run scores today's class mapping (YAMNet's own scores, mean over the window) on the same
windows, so the two can be compared honestly.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon import exitcodes
from custom.daemon.bundle import (
    BundleDraft,
    ClassSpec,
    HeadSpec,
    ModelSpec,
    TensorSpec,
    sha256_file,
    write_bundle,
)
from custom.daemon.frontend import YAMNET
from custom.daemon.head import pool_features
from custom.daemon.model import Model

from .classes import CLASS_NAMES, URBAN_CLASSES
from .headdata import (
    BackboneFeatures,
    DataError,
    Examples,
    build_examples,
    grouped_folds,
    load_examples,
    read_recordings,
    save_examples,
)
from .metrics import best_f1_threshold, per_class_ap
from .tflite_outputs import expose_outputs, final_layer
from .yamnet import class_outputs, inspect_model, read_class_map

HELP = "train a head on YAMNet embeddings from ../shared and write a headed bundle"
CACHE_VERSION = 1
MODEL_FILE = "yamnet.tflite"
HEAD_FILE = "head.tflite"
FOLDS = 5
# (pooling, YAMNet scores appended, augmented mixes used): measured by grouped CV, best top-1 ships. Appending the
# 521 scores lost 2-3 points of top-1 in every pooling on ../shared (2026-11-30), so it is no longer tried by default.
VARIANTS = (("mean", False, False), ("mean", False, True), ("mean_max", False, False), ("mean_max", False, True))
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
        "--cache", type=Path, help="a .npz to keep the backbone features in (outside git), reused when data match"
    )
    parser.add_argument("--bundle-id", default="yamnet-head-urban10")
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


def _draft(args, spec: ModelSpec, head: HeadSpec, sources: dict[str, Path], cuts, mapping, provenance) -> BundleDraft:
    return BundleDraft(
        bundle_id=args.bundle_id,
        version=args.version,
        backbone="yamnet",
        frontend=YAMNET,
        backbone_model=spec,
        classes=[
            ClassSpec(c.name, c.audioset_name, c.mid, t, idx)
            for c, t, idx in zip(URBAN_CLASSES, cuts, mapping, strict=True)
        ],
        sources=sources,
        aggregation="mean",
        provenance=provenance,
        head=head,
    )


def build(args: argparse.Namespace, work: Path) -> tuple[Path, HeadResult]:
    """Train and write the headed bundle to args.out; returns its path and what was measured.

    Raises DataError (one line naming the file, with the exit code) on bad data."""
    from tqdm import tqdm

    started = time.monotonic()
    shared = args.shared
    source_model = shared / "models/yamnet_classification.tflite"
    class_map_path = shared / "models/yamnet_class_map.csv"
    for path in (source_model, class_map_path):
        if not path.is_file():
            raise DataError(f"{path}: no such file", exitcodes.NO_INPUT)
    recordings, held_out = read_recordings(shared, limit_per_label=args.limit_per_label)
    print(f"recordings: {len(recordings)} ({held_out} held-out rows skipped)", flush=True)

    original = source_model.read_bytes()
    layer = final_layer(original)
    backbone_path = work / MODEL_FILE
    backbone_path.write_bytes(expose_outputs(original, [layer.embedding_tensor]))
    spec = inspect_model(backbone_path)
    mapping = class_outputs(read_class_map(class_map_path), None)
    from custom.daemon.runtime import load_interpreter

    emb_detail = load_interpreter(backbone_path).get_output_details()[1]
    emb_spec = TensorSpec(tuple(int(d) for d in emb_detail["shape"]), np.dtype(emb_detail["dtype"]).name)
    emb_dims = int(np.prod(emb_spec.shape))

    def head_spec(pooling: str, with_scores: bool, dims: int) -> HeadSpec:
        model = ModelSpec(HEAD_FILE, TensorSpec((1, dims), "float32"), TensorSpec((1, 10), "float32"), "features")
        return HeadSpec(model, 1, emb_spec, pooling, with_scores, CLASS_NAMES)

    # a probe bundle with an untrained head, so features come from the daemon's own backbone code path
    probe_head = work / "probe_head.tflite"
    probe_head.write_bytes(export_head(np.zeros((emb_dims, 10), np.float32), np.zeros(10, np.float32), "float32"))
    probe = write_bundle(
        _draft(
            args,
            spec,
            head_spec("mean", False, emb_dims),
            {MODEL_FILE: backbone_path, HEAD_FILE: probe_head},
            [0.5] * 10,
            mapping,
            {},
        ),
        work / "probe",
    )
    features = BackboneFeatures(Model(probe))
    thin = sum(1 for r in recordings if r.source == "clips" and r.labels and URBAN_CLASSES[r.labels[0]].clip_label in
               ("children", "jackhammer", "traffic", "subway", "footsteps", "chatter"))  # fmt: skip
    total = len(recordings) + thin * args.augment
    key = json.dumps(
        {
            "backbone": sha256_file(backbone_path),
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
    examples = load_examples(args.cache, key) if args.cache is not None else None
    if examples is None:
        with tqdm(total=total, desc="windows", unit="win", disable=None, mininterval=5) as bar:
            examples = build_examples(
                recordings, features, augment_per_clip=args.augment, seed=args.seed, progress=bar.update
            )
        if args.cache is not None:
            args.cache.parent.mkdir(parents=True, exist_ok=True)
            save_examples(args.cache, examples, key)
    else:
        print(f"features: {len(examples.real)} windows from {args.cache}")
    y = np.stack(examples.labels)
    real = np.asarray(examples.real)
    real_rows = np.flatnonzero(real >= 0)
    truth = y[real_rows]
    fold_of = grouped_folds([recordings[i].group for i in real[real_rows]], truth, FOLDS, args.seed)
    on_clips = np.array([recordings[i].source == "clips" for i in real[real_rows]])

    result = HeadResult(truth=truth, held_out_rows=held_out)
    result.source = [recordings[i].source for i in real[real_rows]]
    result.kind = [recordings[i].kind for i in real[real_rows]]
    for rec in recordings:
        label = URBAN_CLASSES[rec.labels[0]].clip_label if rec.labels else "other"
        result.counts.setdefault(label, {}).setdefault(rec.source, 0)
        result.counts[label][rec.source] += 1
    result.counts.setdefault("(augmented mixes)", {})["clips"] = len(examples.real) - len(real_rows)

    # today's mapping on the same windows: mean over patches of YAMNet's own scores, class by mid
    pooled = np.stack([examples.scores[r].mean(axis=0) for r in real_rows])
    result.mapping_scores = np.stack([pooled[:, list(idx)].max(axis=1) for idx in mapping], axis=1)
    clip_rows = np.flatnonzero(on_clips)
    # as the yamnet converter ships them: best F1 per class on all clips (optimistic for the mapping)
    result.mapping_thresholds = [best_f1_threshold(truth[clip_rows, k], result.mapping_scores[clip_rows, k]) for k in
                                 range(10)]  # fmt: skip
    mapping_figures = figures(result.mapping_scores, truth, result.mapping_thresholds, on_clips)

    best = None
    print(
        f"{'pooling':<9} {'+scores':<8} {'mixes':<6} {'top-1':>6} {'macro AP':>9}"
        f"   (grouped {FOLDS}-fold CV, {len(clip_rows)} clips)"
    )
    mixes = real < 0
    for pooling, with_scores, augmented in VARIANTS:
        x = window_features(examples, pooling, with_scores)
        keep = np.ones(len(real), dtype=bool) if augmented else ~mixes
        if augmented and not mixes.any():
            continue  # --augment 0: nothing to try
        kept_groups = [examples.groups[i] for i in np.flatnonzero(keep)]
        oof = cross_validate(x[keep], y[keep], kept_groups, real[keep], fold_of)
        fig = figures(oof, truth, thresholds_from(oof, truth), on_clips)
        row = {"pooling": pooling, "with_scores": with_scores, "augmented": augmented}
        row.update(top1=fig["top1"], macro_ap=fig["macro_ap"], false_alarm_other=fig["false_alarm_other"])
        result.variants.append(row)
        print(f"{pooling:<9} {str(with_scores):<8} {str(augmented):<6} {fig['top1']:>6.3f} {fig['macro_ap']:>9.3f}",
              flush=True)  # fmt: skip
        if best is None or (fig["top1"], fig["macro_ap"]) > (best[2]["top1"], best[2]["macro_ap"]):
            best = (pooling, with_scores, fig, oof, x, keep, augmented)
    assert best is not None
    pooling, with_scores, _, oof, x, keep, augmented = best
    result.head_oof = oof
    result.thresholds = thresholds_from(oof, truth)
    head_figures = figures(oof, truth, result.thresholds, on_clips)
    result.chosen = {"pooling": pooling, "with_scores": with_scores, "augmented": augmented, "l2": L2}
    result.figures = {"head": head_figures, "mapping": mapping_figures}

    w, b = fit_linear(x[keep], y[keep])
    head_path = work / HEAD_FILE
    head_path.write_bytes(export_head(w, b, args.quantize))
    provenance = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": "custom-convert head",
        "source_model": {"file": source_model.name, "sha256": sha256_file(source_model)},
        "embedding": {"tensor": layer.embedding_tensor, "how": "exposed as output 1 by editing the flatbuffer"},
        "training": {
            "recordings": len(recordings),
            "held_out_rows_skipped": held_out,
            "augment_per_thin_clip": args.augment,
            "seed": args.seed,
            "counts": result.counts,
            "head": f"linear sigmoid, L2 {L2}, {args.quantize}",
        },
        "thresholds": {"rule": THRESHOLD_RULE, "folds": f"{FOLDS}, grouped by source_recording"},
        "cross_validated": {
            "variants": result.variants,
            "chosen": result.chosen,
            "head": {k: v for k, v in head_figures.items() if k != "confusion"},
            "mapping": {k: v for k, v in mapping_figures.items() if k != "confusion"},
        },
    }
    bundle = write_bundle(
        _draft(
            args,
            spec,
            head_spec(pooling, with_scores, x.shape[1]),
            {MODEL_FILE: backbone_path, HEAD_FILE: head_path},
            result.thresholds,
            mapping,
            provenance,
        ),
        args.out,
    )
    model = Model(bundle)  # the written bundle loads, and its head agrees with the numpy fit
    check_rows = real_rows[:: max(1, len(real_rows) // 20)]
    got = np.stack([model.class_scores(np.hstack([examples.scores[r], examples.embeddings[r]])) for r in check_rows])
    worst = float(np.abs(got - _sigmoid(x[check_rows] @ w + b)).max())
    if worst > 0.02:
        raise RuntimeError(f"exported head disagrees with its fit by {worst:.4f}")
    print(f"head TFLite ({args.quantize}) vs float fit: max |difference| {worst:.5f} on {len(check_rows)} windows")
    print(
        f"chosen: pooling={pooling} with_scores={with_scores} mixes={augmented}; "
        f"grouped-CV top-1 {head_figures['top1']:.3f} "
        f"(mapping {mapping_figures['top1']:.3f}), 'other' windows with a label {head_figures['false_alarm_other']:.3f}"
        f" (mapping {mapping_figures['false_alarm_other']:.3f})"
    )
    print("thresholds: " + ", ".join(f"{c.name} {c.threshold:.2f}" for c in bundle.classes))
    print(f"wrote {bundle.path} (bundle sha256 {bundle.sha256[:12]}…, {time.monotonic() - started:.0f} s)")
    return bundle.path, result


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            build(args, Path(tmp))
        except DataError as exc:
            print(f"custom-convert head: {exc}")
            return exc.code
    return exitcodes.OK
