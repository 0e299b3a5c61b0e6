"""`python -m bench.head`: what quantizing the classifier head costs in accuracy, on the AudioSet eval split.

Trains the shipped recipe once (`custom-convert train` defaults, seed 0, on bal_train, no validation folds: they do
not change the final model), exports that one Keras model as float32 and as dynamic-range TFLite, scores the eval
split with both on the sensor's runtime, and prints the threshold-free metrics side by side with the largest score
difference. Same weights, same data: every difference is the quantization's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import shared_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.head", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=shared_dir() / "data" / "audioset", help="AudioSet npz folder")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from custom.convert.evaluate.classifier import score_metrics, tflite_scores
    from custom.convert.tflite.export import export_tflite
    from custom.convert.vggish_classifier.audioset import load_clips
    from custom.convert.vggish_classifier.train import Hyper, _configure_tf, fit_family, inference_model
    from custom.daemon.model.audioset_params import EMBEDDING_SIZE, FRAMES_PER_CLIP

    _configure_tf(args.threads)
    started = time.perf_counter()
    train = load_clips(args.data / "bal_train.npz", seed=0)
    evaluation = load_clips(args.data / "eval.npz")
    hyper = Hyper()
    keras_model = inference_model(fit_family(hyper.model, hyper, train, seed=0))
    names = list(evaluation.class_names)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("float32", "dynamic"):
            path = Path(tmp) / f"{mode}.tflite"
            path.write_bytes(export_tflite(keras_model, (1, FRAMES_PER_CLIP, EMBEDDING_SIZE), mode))
            scores = tflite_scores(path, evaluation.embeddings, threads=args.threads)
            rows[mode] = (path.stat().st_size, scores, score_metrics(evaluation.labels.astype(bool), scores, names))
    diff = np.abs(rows["dynamic"][1] - rows["float32"][1])
    print(f"# Classifier head: float32 vs dynamic-range TFLite on {len(evaluation)} AudioSet eval clips\n")
    print(f"Model `{hyper.model}` (train defaults, seed 0) trained once on bal_train ({len(train)} clips) in "
          f"{time.perf_counter() - started:.0f} s, exported both ways.\n")  # fmt: skip
    print("| head | bytes | macro AP | top-1 (single-label) | dogs taken for birds |")
    print("|---|---:|---:|---:|---:|")
    for mode, (size, _, m) in rows.items():
        print(f"| {mode} | {size} | {m['macro_ap']:.4f} | {m['top1_single_label']:.4f} | {m['dogs_taken_for_birds']} |")
    flips = int(((rows["dynamic"][1] >= 0.5) != (rows["float32"][1] >= 0.5)).sum())
    print(
        f"\nScore difference dynamic - float32: max {diff.max():.4f}, mean {diff.mean():.5f}; "
        f"decisions at 0.5 that differ: {flips} of {diff.size}."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
