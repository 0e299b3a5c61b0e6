"""Train the urban-sound classifier on AudioSet VGGish embeddings and export it as TFLite.

    custom-convert train --data ../shared/data/audioset/bal_train.npz --out out/classifier

Data: an npz subset or a folder of official audioset_v1_embeddings tfrecords (see
custom.convert.vggish_classifier.audioset); labels come from the full AudioSet label list through the ontology ("Bark"
counts as Dog), and clips with none of our classes are used as negatives ("other"). A video id never sits on both
sides of a split.

Procedure (all of it seeded; the same data, seed and settings give the same classifier.tflite bytes):

1. Validation: K-fold split of the training data grouped by video id, stratified by the clip's class ("other" is a
   stratum). Every clip gets an out-of-fold score from models that never saw it. Those scores give the validation
   metrics (macro AP over all clips, "other" included; top-1 on single-label clips) used to choose the model family
   (`--compare` prints them for several families) and to calibrate the per-class thresholds.
2. Thresholds (THRESHOLD_RULE): per class, the cut with the best F1 on the out-of-fold scores, raised where needed
   so that at most `--other-alarm` of the validation "other" clips reach it. Summed over the 10 classes that caps
   the share of "other" clips raising any alarm at 10 x other-alarm (8% by default) on validation.
3. The shipped model: the same recipe trained on all the data; for an ensemble, the mean of its members' scores.

Models take one window of 10 VGGish frames as their raw 0..255 values; de-quantisation (x/255*4-2, the AudioSet
convention), standardisation with the training frames' mean and spread and the padding mask (a zero-padded frame is
all zeros: AudioSet clips shorter than 10 s; the live sensor always gives 10 frames) are part of the graph. Every
output is a per-class sigmoid, so two sounds at once can both score high.

Families (`--model`): `linear` (logistic regression on mean/max/std pooled frames), `mlp` (one hidden layer on the
same pooling), `attention` (per-frame hidden layer, then class-wise attention pooling of the class logits, after
Kong et al. 2018; the default) and `ensemble` (attention + mlp, scores averaged). Chosen by validation macro AP on
bal_train (5 grouped folds, seed 0): linear 0.531, mlp 0.589, attention 0.629, ensemble 0.631. The ensemble's
+0.002 is within the spread of attention over seeds and settings (0.624..0.634) and costs twice the training time,
so the shipped model is `attention`.

Output folder (`--out DIR`): classifier.tflite + classifier.json, the contract defined and checked by
custom.convert.vggish_classifier.artifact (read by `custom-convert vggish --classifier` and `custom-convert evaluate`).
classifier.json carries, besides the contract's classes/thresholds/input/output: threshold_rule, seed, model,
members, hyperparameters, quantize, validation, model_selection, data, tflite_check, training_seconds, versions.

The head is exported with dynamic-range quantization by default (`--quantize`; int8 weights, float activations and
float32 input/output, so the contract and the daemon's feeding code do not change). Its effect on the AudioSet eval
split is measured by evaluating the same seed's float32 and dynamic exports (README, "Classifier").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.model.audioset_params import DEQUANT_OFFSET, DEQUANT_SCALE, EMBEDDING_SIZE, FRAMES_PER_CLIP
from custom.wire import exitcodes

from ..classes import URBAN_CLASSES
from ..evaluate.metrics import average_precision, best_f1_threshold
from .artifact import CLASSIFIER_META, INPUT_SHAPE, write_classifier
from .audioset import ClipSet, load_clips

log = logging.getLogger(__name__)

HELP = "train the classifier (VGGish embeddings -> 10 classes) on AudioSet, calibrate thresholds, export TFLite"
FAMILIES = ("linear", "mlp", "attention", "ensemble")
ENSEMBLE_MEMBERS = ("attention", "mlp")
THRESHOLD_RULE = (
    "per class: the threshold with the best F1 on out-of-fold validation scores (clamped to 0.05..0.95), raised "
    "where needed so that at most {other_alarm:.1%} of the validation 'other' clips reach it"
)
HEAD_MODES = ("float32", "dynamic")  # the head's export; dynamic = int8 weights, float activations
DEFAULT_HEAD_MODE = "dynamic"
# Largest |TFLite - Keras| score difference accepted per export mode (the float32 export matches to rounding).
TFLITE_TOLERANCE = {"float32": 1e-4, "dynamic": 0.05}


@dataclass(frozen=True)
class Hyper:
    """Training settings; the defaults are the shipped classifier's."""

    model: str = "attention"
    epochs: int = 60
    batch_size: int = 128
    learning_rate: float = 1e-3
    l2: float = 1e-3
    width: int = 256  # hidden units (mlp, attention)
    dropout: float = 0.5
    input_dropout: float = 0.2
    folds: int = 5
    other_alarm: float = 0.008  # per-class share of validation "other" clips allowed to reach the threshold
    pos_weight_power: float = 0.5  # positive-class weight = ((1 - prevalence) / prevalence) ** power


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Hyper()
    parser.add_argument("--data", type=Path, required=True, help="bal_train.npz, or a folder of AudioSet tfrecords")
    parser.add_argument("--out", type=Path, required=True, help="output folder for classifier.tflite + .json")
    parser.add_argument("--model", choices=FAMILIES, default=d.model, help=f"model family (default {d.model})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--folds", type=int, default=d.folds, help="validation folds (grouped by video id)")
    parser.add_argument("--width", type=int, default=d.width, help="hidden units")
    parser.add_argument(
        "--other-alarm", type=float, default=d.other_alarm, help="per-class cap on validation 'other' clips alarmed"
    )
    parser.add_argument("--max-negatives", type=int, default=None, help="keep at most this many 'other' clips")
    parser.add_argument("--ontology", type=Path, help="ontology.json (default: beside --data)")
    parser.add_argument("--label-index", type=Path, help="class_labels_indices.csv (default: beside --data)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for TensorFlow")
    parser.add_argument(
        "--quantize",
        choices=HEAD_MODES,
        default=DEFAULT_HEAD_MODE,
        help=f"the exported head's weights (default {DEFAULT_HEAD_MODE})",
    )
    parser.add_argument(
        "--compare",
        metavar="FAMILY[,FAMILY]",
        help="also cross-validate these families and write DIR/model_selection.json (takes longer)",
    )


def run(args: argparse.Namespace) -> int:
    hyper = Hyper(
        model=args.model, epochs=args.epochs, folds=args.folds, width=args.width, other_alarm=args.other_alarm
    )
    try:
        clips = load_clips(
            args.data,
            ontology=args.ontology,
            label_index=args.label_index,
            max_negatives=args.max_negatives,
            seed=args.seed,
        )
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return exitcodes.NO_INPUT
    compare = [f.strip() for f in args.compare.split(",")] if args.compare else []
    unknown = [f for f in compare if f not in FAMILIES]
    if unknown:
        log.error("--compare: unknown families %s (choose from %s)", unknown, ", ".join(FAMILIES))
        return exitcodes.USAGE
    train(clips, args.out, hyper, seed=args.seed, threads=args.threads, compare=compare, quantize=args.quantize)
    return 0


# --------------------------------------------------------------------------------------------------------- model


def _configure_tf(threads: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process (tests train several times)
        pass
    tf.config.experimental.enable_op_determinism()
    import keras

    keras.utils.clear_session()  # restart layer-name counters: names end up in the .tflite bytes


def frame_stats(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread of the real (non-padding) de-quantised frames: (128,), (128,) float32."""
    frames = embeddings[embeddings.max(axis=2) > 0].astype(np.float64) * DEQUANT_SCALE + DEQUANT_OFFSET
    return frames.mean(axis=0).astype(np.float32), (frames.std(axis=0) + 1e-3).astype(np.float32)


def build_member(kind: str, hyper: Hyper, stats: tuple[np.ndarray, np.ndarray], classes: int) -> Any:
    """A Keras model: raw 0..255 float32 [B,10,128] -> class logits [B,classes]."""
    import keras
    from keras import layers, ops

    reg = keras.regularizers.l2(hyper.l2)
    raw = keras.Input((FRAMES_PER_CLIP, EMBEDDING_SIZE), dtype="float32", name="embeddings")
    mask = ops.cast(ops.max(raw, axis=-1, keepdims=True) > 0.5, "float32")  # [B,10,1]; padding frames are all 0
    mean, spread = stats
    x = ((raw * DEQUANT_SCALE + DEQUANT_OFFSET) - mean) / spread * mask  # [B,10,128], padding frames -> 0

    def pooled(h: Any) -> Any:  # masked mean, max and standard deviation over frames -> [B, 3*features]
        count = ops.maximum(ops.sum(mask, axis=1), 1.0)
        avg = ops.sum(h * mask, axis=1) / count
        top = ops.max(ops.where(mask > 0, h, -1e4), axis=1)  # (h + (mask-1)*1e4 breaks the TFLite converter)
        std = ops.sqrt(ops.maximum(ops.sum(ops.square(h - ops.expand_dims(avg, 1)) * mask, axis=1) / count, 1e-6))
        return ops.concatenate([avg, top, std], axis=-1)

    if kind == "linear":
        logits = layers.Dense(classes, kernel_regularizer=reg)(pooled(x))
    elif kind == "mlp":
        h = layers.Dropout(hyper.input_dropout)(pooled(x))
        h = layers.Dropout(hyper.dropout)(layers.Dense(hyper.width, activation="relu", kernel_regularizer=reg)(h))
        logits = layers.Dense(classes, kernel_regularizer=reg)(h)
    elif kind == "attention":
        h = layers.Dropout(hyper.input_dropout)(x)
        h = layers.Dropout(hyper.dropout)(layers.Dense(hyper.width, activation="relu", kernel_regularizer=reg)(h))
        frame_logits = layers.Dense(classes, kernel_regularizer=reg)(h)  # [B,10,C]
        attention = layers.Dense(classes, kernel_regularizer=reg)(h) + (mask - 1.0) * 1e4
        weights = ops.softmax(attention, axis=1)  # over frames, per class; padding frames get 0
        logits = ops.sum(weights * frame_logits, axis=1)
    else:
        raise ValueError(f"unknown model family {kind!r}")
    return keras.Model(raw, logits, name=kind)


def members_of(family: str) -> tuple[str, ...]:
    return ENSEMBLE_MEMBERS if family == "ensemble" else (family,)


def fit_member(kind: str, hyper: Hyper, clips: ClipSet, seed: int) -> Any:
    """Train one member with class-weighted binary cross-entropy; negatives are clips with all-zero targets."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    labels = clips.labels.astype(np.float32)
    model = build_member(kind, hyper, frame_stats(clips.embeddings), labels.shape[1])
    prevalence = np.clip(labels.mean(axis=0), 1.0 / len(labels), None)
    pos_weight = tf.constant((((1 - prevalence) / prevalence) ** hyper.pos_weight_power).astype(np.float32))
    optimizer = keras.optimizers.Adam(hyper.learning_rate)
    x_all = tf.constant(clips.embeddings.astype(np.float32))
    y_all = tf.constant(labels)

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.weighted_cross_entropy_with_logits(y, logits, pos_weight))
            if model.losses:
                loss += tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    rng = np.random.default_rng(seed)
    n, batch = len(labels), min(hyper.batch_size, len(labels))
    for _ in range(hyper.epochs):
        order = rng.permutation(n)
        for start in range(0, n - batch + 1, batch):  # the last partial batch is dropped: one traced shape
            rows = tf.constant(order[start : start + batch])
            step(tf.gather(x_all, rows), tf.gather(y_all, rows))
    return model


def predict(models: list[Any], embeddings: np.ndarray) -> np.ndarray:
    """Mean of the members' sigmoid scores, [N, classes]."""
    import tensorflow as tf

    x = tf.constant(embeddings.astype(np.float32))
    return np.mean([tf.sigmoid(m(x, training=False)).numpy() for m in models], axis=0)


def fit_family(family: str, hyper: Hyper, clips: ClipSet, seed: int) -> list[Any]:
    return [fit_member(kind, hyper, clips, seed + 1000 * i) for i, kind in enumerate(members_of(family))]


def inference_model(models: list[Any]) -> Any:
    """One Keras graph: raw embeddings [B,10,128] -> mean sigmoid score of the members [B,classes]."""
    import keras
    from keras import ops

    raw = keras.Input((FRAMES_PER_CLIP, EMBEDDING_SIZE), dtype="float32", name="embeddings")
    scores = [ops.sigmoid(m(raw)) for m in models]
    out = scores[0] if len(scores) == 1 else ops.mean(ops.stack(scores, axis=0), axis=0)
    return keras.Model(raw, out, name="classifier")


# ---------------------------------------------------------------------------------------------------- validation


def strata(labels: np.ndarray) -> np.ndarray:
    """One stratum per clip: its first class, or len(classes) for "other"."""
    return np.where(labels.sum(axis=1) == 0, labels.shape[1], labels.argmax(axis=1))


def grouped_folds(clips: ClipSet, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, validation rows) per fold; a video id is never on both sides."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(clips)), strata(clips.labels), clips.video_id))


def out_of_fold_scores(family: str, hyper: Hyper, clips: ClipSet, seed: int) -> np.ndarray:
    scores = np.zeros(clips.labels.shape, dtype=np.float64)
    for k, (train_rows, val_rows) in enumerate(grouped_folds(clips, hyper.folds, seed)):
        models = fit_family(family, hyper, clips.subset(train_rows), seed + 1 + k)
        scores[val_rows] = predict(models, clips.embeddings[val_rows])
        log.info("%s: fold %d/%d done", family, k + 1, hyper.folds)
    return scores


def validation_metrics(labels: np.ndarray, scores: np.ndarray, thresholds: np.ndarray | None = None) -> dict:
    """Macro AP over all clips, top-1 on single-label clips and, given thresholds, alarms on "other" clips."""
    aps = [average_precision(labels[:, c], scores[:, c]) for c in range(labels.shape[1])]
    single = labels.sum(axis=1) == 1
    out: dict[str, Any] = {
        "clips": int(len(labels)),
        "macro_ap": round(float(np.nanmean(aps)), 4),
        "per_class_ap": {c.name: round(float(a), 4) for c, a in zip(URBAN_CLASSES, aps, strict=True)},
        "top1_single_label": round(float((scores[single].argmax(1) == labels[single].argmax(1)).mean()), 4),
        "single_label_clips": int(single.sum()),
    }
    if thresholds is not None:
        other = labels.sum(axis=1) == 0
        alarmed = (scores >= thresholds[None, :]).any(axis=1)
        out["other_false_alarm_rate"] = round(float(alarmed[other].mean()), 4)
    return out


def calibrate_thresholds(labels: np.ndarray, scores: np.ndarray, other_alarm: float) -> np.ndarray:
    """THRESHOLD_RULE on out-of-fold scores: best F1, then raised to the (1 - other_alarm) quantile of "other"."""
    other = labels.sum(axis=1) == 0
    thresholds = []
    for c in range(labels.shape[1]):
        cut = best_f1_threshold(labels[:, c], scores[:, c])
        if other.any():
            # the smallest cut that at most other_alarm of the "other" clips reach
            ranked = np.sort(scores[other, c])[::-1]
            allowed = int(np.floor(other_alarm * len(ranked)))
            if allowed < len(ranked):
                cap = float(np.nextafter(ranked[allowed], np.inf))
                cut = max(cut, cap)
        thresholds.append(min(cut, 0.99))
    return np.round(np.array(thresholds, dtype=np.float64), 4)


# ------------------------------------------------------------------------------------------------------ training


def _select(
    clips: ClipSet, hyper: Hyper, seed: int, compare: list[str]
) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
    """Out-of-fold validation of every --compare family and the chosen one; the chosen one's out-of-fold scores."""
    selection = {}
    for family in dict.fromkeys([*compare, hyper.model]):
        t0 = time.perf_counter()
        oof = out_of_fold_scores(family, replace(hyper, model=family), clips, seed)
        selection[family] = {**validation_metrics(clips.labels, oof), "seconds": round(time.perf_counter() - t0, 1)}
        log.info("validation %s: macro AP %.4f, top-1 %.4f", family, selection[family]["macro_ap"],
                 selection[family]["top1_single_label"])  # fmt: skip
        if family == hyper.model:
            chosen_oof = oof
    return selection, chosen_oof


def train(
    clips: ClipSet,
    out_dir: Path,
    hyper: Hyper = Hyper(),
    seed: int = 0,
    threads: int = 2,
    compare: list[str] | None = None,
    quantize: str = DEFAULT_HEAD_MODE,
) -> dict[str, Any]:
    """Validate, calibrate, train on everything, export; return the classifier.json dict."""
    from ..tflite.export import export_tflite

    _configure_tf(threads)
    started = time.perf_counter()
    log.info("training data: %s", json.dumps(clips.summary()))
    selection, chosen_oof = _select(clips, hyper, seed, compare or [])
    thresholds = calibrate_thresholds(clips.labels, chosen_oof, hyper.other_alarm)
    validation = validation_metrics(clips.labels, chosen_oof, thresholds)
    validation["folds"] = hyper.folds
    validation["grouped_by"] = "video_id"

    import keras

    keras.utils.clear_session()  # the shipped graph's layer names (and so its bytes) do not depend on --compare
    models = fit_family(hyper.model, hyper, clips, seed)
    keras_model = inference_model(models)
    flatbuffer = export_tflite(keras_model, INPUT_SHAPE, quantize)
    check_rows = clips.embeddings[:: max(1, len(clips) // 64)]
    elapsed = time.perf_counter() - started
    provenance = {
        "threshold_rule": THRESHOLD_RULE.format(other_alarm=hyper.other_alarm),
        "seed": seed,
        "model": hyper.model,
        "members": list(members_of(hyper.model)),
        "hyperparameters": asdict(hyper),
        "quantize": quantize,
        "validation": validation,
        "model_selection": selection,
        "data": {**clips.source, **clips.summary()},
        "training_seconds": round(elapsed, 1),
        "versions": _versions(),
    }
    with tempfile.TemporaryDirectory(prefix="classifier-") as tmp:  # checked before it replaces anything at --out
        staged = write_classifier(Path(tmp), flatbuffer, list(thresholds), provenance)
        check = check_tflite(staged, keras_model, check_rows, TFLITE_TOLERANCE[quantize])
    provenance["tflite_check"] = check
    tflite_path = write_classifier(out_dir, flatbuffer, list(thresholds), provenance)
    meta = json.loads(tflite_path.with_name(CLASSIFIER_META).read_text())
    if compare:
        (out_dir / "model_selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    log.info(
        "wrote %s (validation macro AP %.4f, other false alarms %.1f%%) in %.0f s",
        tflite_path,
        validation["macro_ap"],
        100 * validation["other_false_alarm_rate"],
        elapsed,
    )
    return meta


def check_tflite(path: Path, keras_model: Any, embeddings: np.ndarray, tolerance: float = 1e-4) -> dict[str, Any]:
    """Run the written .tflite on the TFLite runtime and compare with Keras; raise if they disagree."""
    from custom.daemon.model.runtime import runtime_name

    from ..evaluate.classifier import tflite_scores

    got = tflite_scores(path, embeddings)
    want = np.asarray(keras_model(embeddings.astype(np.float32), training=False))
    diff = float(np.max(np.abs(got - want)))
    if not diff < tolerance:
        raise RuntimeError(f"{path}: TFLite scores differ from Keras by {diff:g} (tolerance {tolerance:g})")
    return {"runtime": runtime_name(), "windows": int(len(embeddings)), "max_abs_diff": diff}


def _versions() -> dict[str, str]:
    import keras
    import sklearn
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__}  # fmt: skip
