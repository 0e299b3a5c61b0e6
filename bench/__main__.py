"""`python -m bench`: per-window cost of our bundles against the seed-style TensorFlow pipeline, in one run.

Every measurement runs in its own subprocess (bench/worker.py) on the same 10 s windows of real audio (16 kHz by
default, so no resampling is counted; --input-rate 44100 for the earlier comparison), so peak RSS is each
pipeline's own and the ratios come from one machine state. Bundles whose backbone takes a batch are measured twice:
all patches of a window in one invoke (the daemon's way since issue 13) and one invoke per patch (before). The
results table goes to stdout and to bench/RESULTS.md (or --out). Pipelines:
(a) our VGGish bundles, one per quantization mode, converted by `custom-convert vggish` from a random-weight
    checkpoint with the official names and shapes (latency does not depend on the weight values);
(b) our YAMNet bundle, built by `custom-convert yamnet` from the shared TF-Hub model (waveform input, one invoke
    per patch), and the same recipe on Coral's log-mel patch YAMNet (batchable);
(c) the seed-style baseline: resampy + numpy log-mel + VGGish in full TensorFlow float (same weights) + Keras head.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from . import build, report
from .common import BENCH_DIR, INPUT_RATE_HZ, ROOT, WINDOW_S, WORK_DIR, parse_result

WORKER_TIMEOUT_S = 900.0


def run_worker(module: str, args: list[str], threads: int, blas_threads: int | None = None) -> dict[str, Any]:
    """`python -m MODULE ARGS` in a fresh process with `blas_threads` (default: `threads`) BLAS threads; its result
    line as a dict."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=build.subprocess_env(threads if blas_threads is None else blas_threads),
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return parse_result(proc.stdout)


def machine_info() -> dict[str, Any]:
    """CPU, cores, memory and library versions, read without importing TensorFlow into this process."""
    cpuinfo = Path("/proc/cpuinfo").read_text()

    def first(key: str) -> str:
        for line in cpuinfo.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
        return "?"

    flags = set(first("flags").split())
    mem_kib = int(
        next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line)
    )
    versions = {}
    for dist in (
        "numpy",
        "tensorflow-cpu",
        "tensorflow",
        "ai-edge-litert",
        "tflite-runtime",
        "soxr",
        "resampy",
        "numba",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": f"{first('model name')} (family {first('cpu family')} model {first('model')})",
        "mhz": float(first("cpu MHz")) if first("cpu MHz") != "?" else float("nan"),
        "cores": len([line for line in cpuinfo.splitlines() if line.startswith("processor")]),
        "simd": " ".join(f for f in ("avx512f", "avx2", "fma", "avx") if f in flags) or "sse only",
        "memory_gib": mem_kib / 2**20,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
        "load_before": Path("/proc/loadavg").read_text().split()[:3],
    }


def takes_batch(bundle: Path) -> bool:
    """Whether the bundle's backbone input has a free batch dimension (-1 in the manifest)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    return manifest["models"]["backbone"]["input"]["shape"][0] == -1


def window_patches(backbone: str) -> int:
    """Patches in one 10 s window at 16 kHz, from the daemon's own front end parameters."""
    from custom.daemon.model.frontend import VGGISH, YAMNET

    params = VGGISH if backbone == "vggish" else YAMNET
    samples = int(WINDOW_S * params.sample_rate_hz)
    return (samples - params.patch_samples) // params.patch_hop_samples + 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer windows, 20 s live runs: a minute-scale check")
    parser.add_argument("--tiny", action="store_true", help="narrow VGGish, 1 mode, few windows: the smoke test")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--modes", nargs="+", choices=build.VGGISH_MODES, help="VGGish quantization modes")
    parser.add_argument("--windows", type=int, help="timed windows per measurement (default 20)")
    parser.add_argument("--warmup", type=int, help="untimed windows first (default 3)")
    parser.add_argument("--live-s", type=float, help="seconds of live daemon run per bundle (default 120; 0 = skip)")
    parser.add_argument("--live-modes", nargs="*", help="VGGish modes run live besides YAMNet (default int8 dynamic)")
    parser.add_argument("--ready-repeats", type=int, help="daemon starts per bundle for start->READY (0 = skip)")
    parser.add_argument("--yamnet-bundle", type=Path, help="use this YAMNet bundle instead of building one")
    parser.add_argument("--no-patch-yamnet", action="store_true", help="skip Coral's patch YAMNet")
    parser.add_argument(
        "--input-rate", type=int, default=INPUT_RATE_HZ, help="rate of the windows fed to every pipeline"
    )
    parser.add_argument("--work", type=Path, default=WORK_DIR, help=f"cache of bundles and inputs (default {WORK_DIR})")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "RESULTS.md", help="markdown report to write")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    quick, tiny = args.quick, args.tiny
    defaults = {
        "modes": ["dynamic"] if tiny else list(build.VGGISH_MODES),
        "windows": 2 if tiny else 5 if quick else 20,
        "warmup": 1 if tiny else 3,
        "live_s": 12.0 if tiny else 20.0 if quick else 120.0,
        "live_modes": ["dynamic"] if tiny else ["int8", "dynamic"],
        "ready_repeats": 1 if tiny else 3,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.arch = "small" if tiny else "official"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    work: Path = args.work
    info = machine_info()
    info["date_utc"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    info["command"] = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    say(f"preparing inputs and bundles (cached in {work})")
    windows_file = build.make_windows(
        work / f"windows-{args.input_rate}.npy", max(1, min(args.windows, 8)), args.input_rate
    )
    bundles: dict[str, Path] = {}
    for mode in args.modes:
        say(f"VGGish {mode} bundle")
        bundles[f"vggish-{mode}"] = build.vggish_bundle(work, args.arch, mode)
    say("YAMNet bundle")
    bundles["yamnet"] = args.yamnet_bundle or build.yamnet_bundle(work)
    if not args.no_patch_yamnet:
        say("YAMNet patch-input bundle (Coral)")
        bundles["yamnet-patch"] = build.yamnet_patch_bundle(work)
    checkpoint, _ = build.vggish_inputs(work, args.arch)

    common = ["--windows-file", str(windows_file), "--warmup", str(args.warmup), "--windows", str(args.windows)]
    common += ["--input-rate", str(args.input_rate)]
    measurements: list[dict[str, Any]] = []
    peaks: dict[int, dict[str, Any]] = {}
    for threads in args.threads:
        say(f"matmul peak, {threads} thread(s)")
        peaks[threads] = run_worker("bench.flops", ["--threads", str(threads)], threads)
        jobs = []
        for name, path in bundles.items():
            jobs.append((name, ["--kind", "bundle", "--bundle", str(path)]))
            if takes_batch(path):  # a fixed input (TF-Hub waveform, Coral patch YAMNet) runs per patch either way
                jobs.append((f"{name}{report.PER_PATCH}", ["--kind", "bundle", "--bundle", str(path), "--per-patch"]))
        jobs.append(("baseline", ["--kind", "baseline", "--checkpoint", str(checkpoint), "--arch", args.arch]))
        for name, job in jobs:
            say(f"{name}, {threads} thread(s)")
            result = run_worker("bench.worker", [*job, *common, "--threads", str(threads)], threads)
            measurements.append({"pipeline": name, "threads": threads, **result})

    daemon: dict[str, Any] = {"ready_s": {}, "live": {}}
    if args.ready_repeats > 0 or args.live_s > 0:
        from .live import LiveRig

        audio = build.make_live_audio(work / "live.flac")
        with LiveRig(audio) as rig:
            for name, path in bundles.items():
                times = []
                for _ in range(args.ready_repeats):
                    say(f"daemon start -> READY, {name}")
                    times.append(rig.start_to_ready(path))
                if times:
                    daemon["ready_s"][name] = times
            if args.live_s > 0:
                live = [f"vggish-{m}" for m in args.live_modes if f"vggish-{m}" in bundles] + ["yamnet"]
                for name in live:
                    say(f"daemon live on the virtual mic, {name}, {args.live_s:.0f} s")
                    daemon["live"][name] = rig.run(bundles[name], args.live_s).to_dict()

    say("FLOPs per window")
    from .flops import tflite_flops, vggish_flops_from_shapes

    flops = {
        "vggish_patch": vggish_flops_from_shapes() if args.arch == "official" else None,
        "vggish_patches": window_patches("vggish"),
        "yamnet_patch": tflite_flops(bundles["yamnet"] / "yamnet.tflite"),
        "yamnet_patches": window_patches("yamnet"),
    }
    first_vggish = next((p for n, p in bundles.items() if n.startswith("vggish")), None)
    if first_vggish is not None:
        flops["vggish_patch_tflite"] = tflite_flops(first_vggish / "vggish.tflite")
        if flops["vggish_patch"] is None:
            flops["vggish_patch"] = flops["vggish_patch_tflite"]
    sizes = {
        name: sum(f.stat().st_size for f in path.iterdir() if f.suffix == ".tflite") for name, path in bundles.items()
    }
    info["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    info["bench_minutes"] = (time.monotonic() - started) / 60.0
    results = {
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "measurements": measurements,
        "peaks": {str(k): v for k, v in peaks.items()},
        "daemon": daemon,
        "flops": flops,
        "model_bytes": sizes,
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    text = report.render(results)
    print(text)
    args.out.write_text(text)
    say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
