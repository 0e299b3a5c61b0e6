"""`python -m bench.ensemble`: what a two-backbone (version-2) bundle costs per window against today's YAMNet bundle.

Issue 18's budget: at most 1.5x the YAMNet bundle per 10 s window, at 1 and 2 threads. Builds (or reuses, in
bench/.work/, while the converter's code is unchanged) the YAMNet mapping bundle (`custom-convert yamnet`), the
single-backbone head bundles and the averaged two-backbone bundle (`custom-convert head --ship ...` on ../shared,
features cached outside git), then times every bundle in its own subprocess (bench/worker.py: the daemon's code
path, CPU time and wall time, peak RSS) on the same real 16 kHz windows, interleaving bundles per thread count so
machine load hits all alike. Prints a markdown table and writes it to bench/ENSEMBLE.md (or --out).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from custom.daemon.cli import BLAS_ENVIRONMENT

from .__main__ import machine_info, run_worker
from .common import BENCH_DIR, WORK_DIR, cached_bundle, mark_bundle, shared_dir

BUNDLES = {  # name -> converter command that builds it (after `--shared S --out DIR`)
    "yamnet mapping (v1)": ["yamnet"],
    "yamnet head (v1)": ["head", "--backbone", "yamnet", "--ship", "yamnet"],
    "efficientat head (v1)": ["head", "--backbone", "efficientat", "--ship", "efficientat"],
    "both, averaged (v2)": ["head", "--backbone", "both", "--ship", "averaged"],
}
BASELINE = "yamnet mapping (v1)"
DAEMON_BLAS_THREADS = int(BLAS_ENVIRONMENT["OPENBLAS_NUM_THREADS"])  # as `custom-sensord` pins numpy's BLAS


def build(name: str, shared: Path, work: Path) -> Path:
    out = work / name.split(" (")[0].replace(" ", "-").replace(",", "")
    command = BUNDLES[name]
    if cached_bundle(out, command):
        return out
    shutil.rmtree(out, ignore_errors=True)  # built by an older converter (or interrupted): never time it
    extra = ["--cache", str(work / "features.npz")] if command[0] == "head" else []
    layout = ["--tflite", str(shared / "models/yamnet_classification.tflite")] if command[0] == "yamnet" else [
        "--shared", str(shared)]  # fmt: skip
    subprocess.run([sys.executable, "-m", "custom.convert.cli", *command, *layout, "--out", str(out), *extra],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    mark_bundle(out, command)
    return out


def windows_file(shared: Path, work: Path, count: int) -> Path:
    """`count` real 10 s windows at 16 kHz from the traffic and siren clips, saved once as .npy."""
    from custom.daemon.audio.audiofile import read_audio

    path = work / f"windows-{count}.npy"
    if not path.is_file():
        clips = sorted((shared / "data/clips/traffic").glob("*"))[:count] + sorted(
            (shared / "data/clips/siren").glob("*")
        )
        audio = np.concatenate([read_audio(c, 16000).waveform for c in clips])
        np.save(path, np.resize(audio, (count, 160000)).astype(np.float32))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=20, help="timed windows per bundle and thread count")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "ENSEMBLE.md")
    args = parser.parse_args(argv)
    shared, work = shared_dir(), WORK_DIR / "ensemble"
    work.mkdir(parents=True, exist_ok=True)
    bundles = {name: build(name, shared, work) for name in BUNDLES}
    wins = windows_file(shared, work, 8)
    results: dict[tuple[str, int], dict] = {}
    for threads in (1, 2):
        for name, path in bundles.items():
            results[(name, threads)] = run_worker(
                "bench.worker",
                ["--kind", "bundle", "--bundle", str(path), "--windows-file", str(wins), "--input-rate", "16000",
                 "--threads", str(threads), "--windows", str(args.windows)],
                threads, blas_threads=DAEMON_BLAS_THREADS,
            )  # fmt: skip
    info = machine_info()
    lines = [
        "# Two-backbone bundle: cost per 10 s window against today's YAMNet bundle",
        "",
        f"`python -m bench.ensemble` on {info.get('cpu', '?')}, {info.get('cores', '?')} cores; "
        f"{args.windows} windows per cell (median), 16 kHz real audio, the daemon's code path, each bundle in its "
        "own process. CPU = all threads' CPU time per window (robust to a busy machine); ratio = CPU / the YAMNet "
        "mapping bundle's at the same thread count. Target (issue 18): <= 1.5x. At 2 threads a version-2 bundle "
        "runs its members side by side, one interpreter thread each (`EnsembleModel`). numpy's BLAS is pinned to 1 "
        "thread, as `custom-sensord` pins it.",
        "",
        "| bundle | threads | CPU ms | wall ms | ratio (CPU) | ratio (wall) | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for threads in (1, 2):
        base = results[(BASELINE, threads)]
        base_cpu, base_wall = statistics.median(base["cpu_ms"]), statistics.median(base["total_ms"])
        for name in BUNDLES:
            r = results[(name, threads)]
            cpu, wall = statistics.median(r["cpu_ms"]), statistics.median(r["total_ms"])
            lines.append(
                f"| {name} | {threads} | {cpu:.1f} | {wall:.1f} | {cpu / base_cpu:.2f}x | {wall / base_wall:.2f}x | "
                f"{r['peak_rss_kib'] / 1024:.0f} |"
            )
    lines += ["", "Bundles: " + "; ".join(f"{n}: `custom-convert {' '.join(c)}`" for n, c in BUNDLES.items()) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
