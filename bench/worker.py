"""One pipeline, one thread count, one process: time N windows and report the process's own memory.

Run by the orchestrator as `python -m bench.worker ...`, one subprocess per measurement, so each peak RSS (VmHWM)
is that pipeline's alone, imports included, as the process on a sensor would pay it.

Pipelines:
- ``bundle``: the sensor's path. soxr to 16 kHz (nothing at 16 kHz input), then
  `custom.daemon.model.inference.Model.scores` (numpy log-mel, TFLite backbone with all patches of the window in one
  invoke where the model takes a batch, or one per patch with --per-patch as before issue 13, then PCA + classifier
  or class mapping). No TensorFlow is imported.
- ``baseline``: the seed project's way, kept under bench/ only. resampy (kaiser_best, its default) to 16 kHz,
  the same numpy log-mel (ours: the seed's mel_features.py computes the same thing at the same cost, the seed's
  extra cost was resampy + TensorFlow), VGGish as a float32 Keras model in full TensorFlow with the same weights,
  the AudioSet PCA postprocess, and a Keras classifier head.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import INPUT_RATE_HZ, emit, proc_status_kib, shared_dir


def _bundle_pipeline(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(per-window function, load info) for a bundle on the daemon's own code path."""
    t0 = time.perf_counter()
    from custom.daemon.audio.pcm import to_model_rate
    from custom.daemon.model.bundle import load_bundle
    from custom.daemon.model.inference import open_model
    from custom.daemon.model.runtime import runtime_name

    t1 = time.perf_counter()
    model = open_model(load_bundle(args.bundle), threads=args.threads, batched=not args.per_patch)
    t2 = time.perf_counter()
    rate = model.input_rate_hz  # a version-2 bundle takes the 16 kHz band and resamples per member

    def window(x: np.ndarray) -> tuple[float, float, np.ndarray]:
        s0 = time.perf_counter()
        waveform = to_model_rate(x, args.input_rate, rate)
        s1 = time.perf_counter()
        result = model.scores(waveform)
        return (s1 - s0) * 1e3 + result.frontend_ms, result.model_ms, result.scores

    return window, {"import_s": t1 - t0, "load_s": t2 - t1, "runtime": runtime_name()}


def _baseline_pipeline(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """(per-window function, load info) for the seed-style full-TensorFlow pipeline."""
    t0 = time.perf_counter()
    import resampy
    import tensorflow as tf

    from custom.convert.backbones.vggish_model import build_keras, read_checkpoint
    from custom.daemon.audio.pcm import to_mono_float32
    from custom.daemon.model.frontend import VGGISH, Frontend
    from custom.daemon.model.postprocess import AudioSetPCA

    from .build import architecture

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    t1 = time.perf_counter()
    arch = architecture(args.arch)
    vggish = build_keras(read_checkpoint(args.checkpoint, arch), arch)
    pca = AudioSetPCA.load(shared_dir() / "models" / "vggish_pca_params.npz")
    tf.keras.utils.set_random_seed(0)
    # The seed's head: a small Keras MLP over the 10 x 128 uint8 embeddings of a clip (its exact layout is not
    # known; any head this size costs microseconds next to VGGish's ~17 GFLOP).
    head = tf.keras.Sequential(
        [
            tf.keras.Input(shape=(10, 128)),
            tf.keras.layers.Rescaling(1.0 / 255.0),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(128, activation="relu"),
            tf.keras.layers.Dense(10, activation="sigmoid"),
        ]
    )
    frontend = Frontend(VGGISH)
    t2 = time.perf_counter()

    def window(x: np.ndarray) -> tuple[float, float, np.ndarray]:
        s0 = time.perf_counter()
        waveform = to_mono_float32(x)
        if args.input_rate != VGGISH.sample_rate_hz:
            waveform = resampy.resample(waveform, args.input_rate, VGGISH.sample_rate_hz)
        patches = frontend.log_mel_patches(waveform.astype(np.float32))  # (10, 96, 64)
        s1 = time.perf_counter()
        embeddings = vggish(patches, training=False).numpy()  # (10, 128) float, one batched call as the seed did
        frames = np.zeros((1, 10, 128), np.float32)
        quantized = pca(embeddings)[:10]
        frames[0, : len(quantized)] = quantized
        scores = head(frames, training=False).numpy()[0]
        return (s1 - s0) * 1e3, (time.perf_counter() - s1) * 1e3, scores

    return window, {"import_s": t1 - t0, "load_s": t2 - t1, "runtime": f"tensorflow {tf.__version__}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    parser.add_argument("--kind", choices=("bundle", "baseline"), required=True)
    parser.add_argument("--bundle", type=Path, help="bundle folder (kind bundle)")
    parser.add_argument("--checkpoint", type=Path, help="VGGish TF1 checkpoint (kind baseline)")
    parser.add_argument("--arch", default="official", help="VGGish layer widths of the checkpoint (kind baseline)")
    parser.add_argument("--windows-file", type=Path, required=True, help=".npy of (n, samples) float32 windows")
    parser.add_argument("--input-rate", type=int, default=INPUT_RATE_HZ)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--per-patch", action="store_true", help="one invoke per patch (kind bundle), as before")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--windows", type=int, default=20)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    windows = np.load(args.windows_file, mmap_mode="r")
    make = _bundle_pipeline if args.kind == "bundle" else _baseline_pipeline
    window, info = make(args)
    ready_s = time.perf_counter() - started
    rows: list[tuple[float, float, float, float]] = []
    steady_rss: list[int] = []
    finite = True
    for i in range(args.warmup + args.windows):
        x = np.array(windows[i % len(windows)], dtype=np.float32)  # copy out of the mmap: not part of the timing
        t0, c0 = time.perf_counter(), time.process_time()
        frontend_ms, model_ms, scores = window(x)
        total_ms = (time.perf_counter() - t0) * 1e3
        cpu_ms = (time.process_time() - c0) * 1e3  # all threads' CPU: far less sensitive than wall time to a busy box
        finite = finite and bool(np.all(np.isfinite(scores)))
        if i >= args.warmup:  # warm-up windows fill caches, JITs (resampy's numba) and allocator pools
            rows.append((frontend_ms, model_ms, total_ms, cpu_ms))
            steady_rss.append(proc_status_kib("VmRSS"))
    emit(
        {
            **info,
            "ready_s": ready_s,
            "frontend_ms": [r[0] for r in rows],
            "model_ms": [r[1] for r in rows],
            "total_ms": [r[2] for r in rows],
            "cpu_ms": [r[3] for r in rows],
            # resident memory split: anonymous (heap, packed weights) vs file-backed (the mmapped .tflite, libraries),
            # which the kernel can drop and re-read under memory pressure
            "rss_anon_kib": proc_status_kib("RssAnon"),
            "rss_file_kib": proc_status_kib("RssFile"),
            "steady_rss_kib": int(np.median(steady_rss)) if steady_rss else proc_status_kib("VmRSS"),
            "rss_after_kib": steady_rss,
            "peak_rss_kib": proc_status_kib("VmHWM"),
            "scores_finite": finite,
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
