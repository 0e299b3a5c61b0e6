"""`python -m bench.weight_cache MODEL.tflite`: does the XNNPACK weight cache stop packed weights doubling RSS?

XNNPACK repacks every weight into its own layout at load time, so a process holds the mmapped .tflite (file-backed)
and the packed copy (anonymous). ai_edge_litert offers a weight cache only through its CompiledModel API
(`CpuOptions.xnnpack_weight_cache_path`, a file path), not through the Interpreter API that tflite-runtime 2.14
shares with it. Each variant runs in its own process (3 invokes) and reports its memory:

- interpreter: `ai_edge_litert.interpreter.Interpreter` via the daemon's RowRunner, a 10-patch batch;
- compiled: `CompiledModel` on the CPU, no cache, batch 1 (its input resize to 10 crashes in ai_edge_litert 2.3.0:
  the last row tries it);
- compiled+cache (first): batch 1 with a cache file path that does not exist yet (the cache is written);
- compiled+cache (reuse): the same again, the cache file already there (what every start after the first sees).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import emit, parse_result, proc_status_kib

PATCHES = 10


def _interpreter(model: Path, threads: int) -> None:
    from custom.daemon.model.runtime import RowRunner

    runner = RowRunner(model, threads=threads)
    x = np.random.default_rng(0).normal(size=(PATCHES, *runner.row_shape)).astype(np.float32)
    for _ in range(3):
        runner(x)


def _compiled(model: Path, threads: int, cache_dir: str, patches: int) -> None:
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import CpuOptions, Options

    cpu = CpuOptions(num_threads=threads, xnnpack_weight_cache_path=cache_dir)
    compiled = CompiledModel.from_file(
        str(model), options=Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=cpu)
    )
    if patches != 1:
        compiled.resize_input_tensor(0, [patches, 96, 64])
    inputs, outputs = compiled.create_input_buffers(0), compiled.create_output_buffers(0)
    inputs[0].write(np.random.default_rng(0).normal(size=(patches, 96, 64)).astype(np.float32))
    for _ in range(3):
        compiled.run_by_index(0, inputs, outputs)


def worker(variant: str, model: Path, threads: int, cache_dir: str) -> int:
    started = time.perf_counter()
    if variant == "interpreter":
        _interpreter(model, threads)
    else:
        _compiled(model, threads, cache_dir, PATCHES if variant == "compiled-batch" else 1)
    emit(
        {
            "seconds": time.perf_counter() - started,
            "peak_rss_kib": proc_status_kib("VmHWM"),
            "rss_kib": proc_status_kib("VmRSS"),
            "rss_anon_kib": proc_status_kib("RssAnon"),
            "rss_file_kib": proc_status_kib("RssFile"),
        }
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.weight_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        return worker(args.variant, args.model, args.threads, args.cache_dir)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        cache_file = str(Path(cache) / "weights.xnnpack_cache")
        for label, variant, cache_dir in (
            ("interpreter, batch 10", "interpreter", ""),
            ("compiled, batch 1", "compiled", ""),
            ("compiled+cache (first), batch 1", "compiled", cache_file),
            ("compiled+cache (reuse), batch 1", "compiled", cache_file),
            ("compiled, batch 10", "compiled-batch", ""),
        ):
            cmd = [sys.executable, "-m", "bench.weight_cache", str(args.model), "--threads", str(args.threads)]
            cmd += ["--variant", variant, "--cache-dir", cache_dir]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                rows.append((label, None, proc.stderr.strip().splitlines()[-1:] or ["failed"]))
                continue
            rows.append((label, parse_result(proc.stdout), None))
        cached = {p.name: p.stat().st_size for p in Path(cache).iterdir()}
    size = args.model.stat().st_size / 2**20
    print(f"# XNNPACK weight cache: {args.model} ({size:.1f} MiB), {args.threads} thread(s)\n")
    print("| variant | peak RSS MiB | RSS MiB | anon MiB | file MiB | load + 3 invokes s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r, error in rows:
        if r is None:
            print(f"| {label} | failed: {error[0][:80]} | | | | |")
            continue
        print(
            f"| {label} | {r['peak_rss_kib'] / 1024:.0f} | {r['rss_kib'] / 1024:.0f} | {r['rss_anon_kib'] / 1024:.0f} "
            f"| {r['rss_file_kib'] / 1024:.0f} | {r['seconds']:.2f} |"
        )
    print(f"\ncache file(s) after the runs (bytes): {json.dumps(cached)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
