"""`python -m bench.batching BUNDLE`: one invoke per window against one invoke per patch, paired in one process.

On a shared machine the load drifts between the main bench's subprocesses, which can swamp a 10-30 % difference.
Here the same bundle is loaded twice in one process (batched and per patch) and the two run alternately on the same
windows, so both see the same machine state; the table gives p50 wall and CPU ms of the backbone per window.
Memory is not measured here (two interpreters share the process): the main bench's rows give each one's RSS.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .build import make_windows
from .common import WORK_DIR


def measure(bundle: Path, threads: int, windows: np.ndarray, warmup: int) -> dict[str, tuple[float, float]]:
    from custom.daemon.model.bundle import load_bundle
    from custom.daemon.model.inference import Model

    loaded = load_bundle(bundle)
    models = {"batched": Model(loaded, threads=threads), "per patch": Model(loaded, threads=threads, batched=False)}
    wall: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}
    for i, window in enumerate(windows):
        patches = models["batched"]._patches(np.asarray(window, dtype=np.float32))
        order = list(models.items()) if i % 2 == 0 else list(reversed(models.items()))  # no order bias
        for name, model in order:
            t0, c0 = time.perf_counter(), time.process_time()
            model.backbone(patches)
            if i >= warmup:
                wall[name].append((time.perf_counter() - t0) * 1e3)
                cpu[name].append((time.process_time() - c0) * 1e3)
    return {k: (float(np.median(wall[k])), float(np.median(cpu[k]))) for k in models}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batching", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--work", type=Path, default=WORK_DIR)
    args = parser.parse_args(argv)
    windows_file = make_windows(args.work / "windows-16000.npy", 8, 16000)
    source = np.load(windows_file)
    windows = [source[i % len(source)] for i in range(args.warmup + args.windows)]
    print("| bundle | threads | batched wall p50 ms | per patch wall p50 ms | speed-up | batched CPU ms | "
          "per patch CPU ms | CPU ratio |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for bundle in args.bundles:
        for threads in args.threads:
            r = measure(bundle, threads, windows, args.warmup)
            (bw, bc), (pw, pc) = r["batched"], r["per patch"]
            print(f"| {bundle.name} | {threads} | {bw:.1f} | {pw:.1f} | {pw / bw:.2f}x | {bc:.1f} | {pc:.1f} "
                  f"| {pc / bc:.2f}x |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
