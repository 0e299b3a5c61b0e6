"""`python -m bench.levels`: what the per-window level work (A-weighting, fast levels, Ln) costs at 48 kHz, as a
share of the whole window's processing (resample to 16 kHz + YAMNet + levels), on real audio.

Target (issue #14): levels under 10 % of the window's processing time. Prints a markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import soxr

from custom.daemon.audio.audiofile import read_audio
from custom.daemon.audio.pcm import resample
from custom.daemon.model.bundle import load_bundle
from custom.daemon.model.inference import Model
from custom.daemon.noise.levels import LevelMeter

from .build import clip_files, yamnet_bundle
from .common import WINDOW_S, WORK_DIR

CAPTURE_RATE_HZ = 48000


def windows_48k(count: int) -> list[np.ndarray]:
    """`count` 10 s windows of real clips end to end, brought to 48 kHz (what a USB mic delivers)."""
    audio = np.concatenate([read_audio(p, 16000).waveform for p in clip_files(per_class=2)])
    size = int(WINDOW_S * 16000)
    audio = np.resize(audio, size * count)
    return [
        soxr.resample(audio[i * size : (i + 1) * size], 16000, CAPTURE_RATE_HZ).astype(np.float32) for i in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.levels", description=__doc__)
    parser.add_argument("--windows", type=int, default=12, help="windows measured (default 12, first one dropped)")
    parser.add_argument("--threads", type=int, default=2, help="TFLite threads (the shipped default is 2)")
    args = parser.parse_args(argv)

    WORK_DIR.mkdir(parents=True, exist_ok=True)
    model = Model(load_bundle(yamnet_bundle(WORK_DIR)), threads=args.threads)
    meter = LevelMeter()
    times: dict[str, list[float]] = {"resample": [], "model": [], "levels": [], "total": []}
    for i, window in enumerate(windows_48k(args.windows + 1)):
        t0 = time.perf_counter()
        waveform = resample(window, CAPTURE_RATE_HZ, 16000)
        t1 = time.perf_counter()
        model.scores(waveform)
        t2 = time.perf_counter()
        meter(window, CAPTURE_RATE_HZ)
        t3 = time.perf_counter()
        if i == 0:
            continue  # warm-up: interpreter first call, FFT plan, weighting curve
        for name, value in (("resample", t1 - t0), ("model", t2 - t1), ("levels", t3 - t2), ("total", t3 - t0)):
            times[name].append(value * 1e3)
    total = statistics.median(times["total"])
    print(f"Per-window cost at {CAPTURE_RATE_HZ} Hz capture, 10 s windows, YAMNet, {args.threads} threads, "
          f"median of {args.windows} windows")  # fmt: skip
    print()
    print("| step | median ms | p95 ms | share of window processing |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        p95 = float(np.percentile(values, 95))
        print(f"| {name} | {statistics.median(values):.1f} | {p95:.1f} | {statistics.median(values) / total:.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
