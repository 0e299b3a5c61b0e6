"""Render the bench's raw results as the markdown table, ratios and Raspberry Pi estimates of bench/RESULTS.md."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Targets from issue 13 (same run, equal threads, 16 kHz input): speed-up and peak-RSS reduction per window against
# the seed-style pipeline (c). Issue 8 had asked 6x/8x and 10x/20x at 44.1 kHz input.
TARGETS = {"vggish": (2.5, 8.0), "yamnet": (4.0, 20.0)}
PER_PATCH = "@per-patch"  # measurement-name suffix: the bundle run one invoke per patch, as before issue 13
READY_TARGET_S = 2.0
BASELINE = "baseline"
MIB = 1024.0  # KiB per MiB

# Paper assumptions for the Pi estimates (stated again in the report).
# FP32 FLOP per cycle per core: x86 with AVX2+FMA on two 256-bit FMA pipes (Haswell+, Zen 2/3) = 2*8*2 = 32;
# Cortex-A72 (Pi 4): two 128-bit NEON pipes, FMLA on both = 16; Cortex-A53 (Pi Zero 2W): 8.
X86_FLOP_PER_CYCLE = {"avx512f": 64.0, "avx2": 32.0, "avx": 16.0}
PARALLEL_EFFICIENCY = {1: 1.0, 2: 0.9, 4: 0.75}  # assumed: XNNPACK splits each op; small ops scale worse
PI_DEVICES = (
    # name, cores, GHz, FP32 FLOP/cycle/core, sustained DRAM read GB/s, RAM MiB (smallest common model)
    ("Raspberry Pi 4 (Cortex-A72 @ 1.5 GHz)", 4, 1.5, 16.0, 4.0, 2048),
    ("Raspberry Pi Zero 2W (Cortex-A53 @ 1.0 GHz)", 4, 1.0, 8.0, 1.5, 512),
)


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _bundle(name: str) -> str:
    """The bundle a measurement ran (its per-patch variant shares the bundle)."""
    return name.removesuffix(PER_PATCH)


def _label(name: str) -> str:
    if name == BASELINE:
        return "(c) seed-style TF float"
    how = ", per patch (before)" if name.endswith(PER_PATCH) else ""
    bundle = _bundle(name)
    if bundle.startswith("vggish-"):
        return f"(a) VGGish {bundle.split('-', 1)[1]}" + (how or ", batched")
    if bundle == "yamnet-patch":  # its graph has a fixed [1, 96, 64, 1] reshape: one patch per invoke
        return "(b) YAMNet patch (Coral)" + how
    return "(b) YAMNet waveform"


def _backbone(name: str) -> str:
    return "yamnet" if name.startswith("yamnet") else "vggish"


def _window_flops(name: str, flops: dict[str, Any]) -> float:
    key = _backbone(name)
    return float(flops[f"{key}_patch"]) * int(flops[f"{key}_patches"])


def _theoretical_gflops(machine: dict[str, Any], threads: int) -> float:
    per_cycle = next((v for k, v in X86_FLOP_PER_CYCLE.items() if k in machine["simd"].split()), 8.0)
    return per_cycle * machine["mhz"] / 1e3 * threads


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m in results["measurements"]:
        threads = m["threads"]
        model_p50 = _p(m["model_ms"], 50)
        gflops = _window_flops(m["pipeline"], results["flops"]) / (model_p50 / 1e3) / 1e9
        rows.append(
            {
                "name": m["pipeline"],
                "threads": threads,
                "frontend_p50": _p(m["frontend_ms"], 50),
                "model_p50": model_p50,
                "total_p50": _p(m["total_ms"], 50),
                "total_p95": _p(m["total_ms"], 95),
                "cpu_p50": _p(m.get("cpu_ms", []), 50),
                "anon_mib": m.get("rss_anon_kib", 0) / MIB,
                "peak_mib": m["peak_rss_kib"] / MIB,
                "steady_mib": m["steady_rss_kib"] / MIB,
                "gflops": gflops,
                "pct_matmul": 100.0 * gflops / results["peaks"][str(threads)]["gflops"],
                "pct_theory": 100.0 * gflops / _theoretical_gflops(results["machine"], threads),
                "ready_s": m["ready_s"],
                "runtime": m["runtime"],
                "finite": m["scores_finite"],
            }
        )
    return rows


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """(a)/(c) and (b)/(c) per thread count: speed-up of total p50 and peak-RSS reduction, against the targets."""
    rows = _rows(results)
    out = []
    for threads in sorted({r["threads"] for r in rows}):
        base = next((r for r in rows if r["name"] == BASELINE and r["threads"] == threads), None)
        if base is None:
            continue
        for r in rows:
            if r["threads"] != threads or r["name"] == BASELINE:
                continue
            speed_target, rss_target = TARGETS[_backbone(r["name"])]
            speedup = base["total_p50"] / r["total_p50"]
            cpu_speedup = base["cpu_p50"] / r["cpu_p50"]
            rss = base["peak_mib"] / r["peak_mib"]
            out.append(
                {
                    "name": r["name"],
                    "threads": threads,
                    "speedup": speedup,
                    "cpu_speedup": cpu_speedup,
                    "rss_ratio": rss,
                    "speed_target": speed_target,
                    "rss_target": rss_target,
                    "met": speedup >= speed_target and rss >= rss_target,
                }
            )
    return out


def pi_estimates(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-window model time on each Pi, on paper: a roofline max(compute, weight streaming).

    compute = FLOPs / (efficiency x Pi peak x threads), with efficiency = the fraction of this CPU's theoretical
    peak the same model reached here at the same thread count (2-thread efficiency used for 4 threads);
    weight streaming = weight bytes x invokes per window / sustained DRAM bandwidth, because every invoke re-reads
    every weight and the Pis' L2 (1 MB / 512 KB) holds none of these models (a batched VGGish window is one invoke).
    """
    rows = [r for r in _rows(results) if r["name"] != BASELINE]
    out = []
    for device, cores, ghz, per_cycle, bandwidth, ram_mib in PI_DEVICES:
        for name in sorted({r["name"] for r in rows}):
            for threads in (1, 2, cores):
                ref = min((r for r in rows if r["name"] == name), key=lambda r: r["threads"])
                # CPU time, not wall time: on one thread it is the compute the window needed, whatever else ran
                cpu_s = (ref["cpu_p50"] if math.isfinite(ref["cpu_p50"]) else ref["model_p50"]) / 1e3
                achieved = _window_flops(name, results["flops"]) / cpu_s / 1e9
                efficiency = achieved / _theoretical_gflops(results["machine"], ref["threads"])
                speed = efficiency * per_cycle * ghz * 1e9 * threads * PARALLEL_EFFICIENCY[threads]
                compute_s = _window_flops(name, results["flops"]) / speed
                key = _backbone(name)
                batched = key == "vggish" and not name.endswith(PER_PATCH)
                invokes = 1 if batched else int(results["flops"][f"{key}_patches"])
                stream_s = results["model_bytes"][_bundle(name)] * invokes / (bandwidth * 1e9)
                out.append(
                    {
                        "device": device,
                        "name": name,
                        "threads": threads,
                        "compute_ms": compute_s * 1e3,
                        "stream_ms": stream_s * 1e3,
                        "window_ms": max(compute_s, stream_s) * 1e3,
                        "peak_mib_here": ref["peak_mib"],
                        "ram_mib": ram_mib,
                    }
                )
    return out


def _recommendation(estimates: list[dict[str, Any]], device: str) -> str:
    """Cheapest thread count that keeps the model under 10 % of real time with room in RAM, per backbone."""
    picks = []
    for backbone in ("vggish", "yamnet"):
        rows = [
            e
            for e in estimates
            if e["device"] == device and _backbone(e["name"]) == backbone and e["peak_mib_here"] < 0.4 * e["ram_mib"]
        ]
        fits = sorted((e for e in rows if e["window_ms"] <= 1000.0), key=lambda e: (e["threads"], e["window_ms"]))
        if fits:
            e = fits[0]
            picks.append(f"{_label(e['name'])} on {e['threads']} thread(s), ~{e['window_ms']:.0f} ms per window")
        else:
            picks.append(f"no {backbone} bundle stays under 10 % of real time within 40 % of the RAM")
    return "; ".join(picks)


def _ceiling(results: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """How large a VGGish speed-up over (c) is physically possible here: (c)'s time over our front end plus
    VGGish's FLOPs at this CPU's theoretical peak (float32; int8 on AVX2 without VNNI can at most double it)."""
    out = []
    flops = _window_flops("vggish-x", results["flops"])
    for threads in sorted({r["threads"] for r in rows}):
        base = next((r for r in rows if r["name"] == BASELINE and r["threads"] == threads), None)
        ours = [r for r in rows if r["name"].startswith("vggish") and r["threads"] == threads]
        if base is None or not ours:
            continue
        floor_ms = flops / _theoretical_gflops(results["machine"], threads) / 1e6
        front_ms = min(r["frontend_p50"] for r in ours)
        out.append(
            f"- Ceiling on {threads} thread(s): VGGish's {flops / 1e9:.1f} GFLOP take at least {floor_ms:.0f} ms at "
            f"the theoretical FP32 peak ({floor_ms / 2:.0f} ms for int8 at twice that), plus our front end "
            f"{front_ms:.0f} ms; (c) took {base['total_p50']:.0f} ms, so no VGGish bundle can be more than "
            f"{base['total_p50'] / (floor_ms + front_ms):.1f}x (float) / "
            f"{base['total_p50'] / (floor_ms / 2 + front_ms):.1f}x (int8) faster here at equal threads."
        )
    return out


def _rate(results: dict[str, Any]) -> int:
    return int(results["args"].get("input_rate", 44100))  # runs before issue 13 fed 44.1 kHz


def _front_end_note(results: dict[str, Any]) -> str:
    if _rate(results) == 16000:
        return "Front end = numpy log-mel only (16 kHz input: no resampling anywhere)"
    return f"Front end = resampling {_rate(results) / 1e3:g} -> 16 kHz (soxr in ours, resampy in (c)) + numpy log-mel"


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    flops = results["flops"]
    rows = _rows(results)
    lines = [
        "# Benchmarks: per-window cost against the seed-style TensorFlow pipeline",
        "",
        f"Fresh from `{machine['command'].strip()}` on {machine['date_utc']} "
        f"({machine['bench_minutes']:.1f} min). Regenerate with `python -m bench` (see the README).",
        "",
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores at {machine['mhz']:.0f} MHz, SIMD {machine['simd']}; "
        f"{machine['memory_gib']:.1f} GiB RAM; Linux {machine['kernel']}",
        f"- Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
        + f"; numpy BLAS {results['peaks'][next(iter(results['peaks']))]['blas']}",
        f"- Load average before / after: {' '.join(machine['load_before'])} / {' '.join(machine['load_after'])} "
        "(the machine is shared: absolute times are noisy, ratios within this one run are what count)",
        f"- Each row: its own process, {results['args']['warmup']} warm-up + {results['args']['windows']} timed "
        f"windows of the same real clips at {_rate(results) / 1e3:g} kHz (10 s each); peak RSS is the process's "
        "VmHWM at the end "
        "(imports included), steady RSS the median VmRSS after each timed window.",
        "",
        "## Per 10 s window",
        "",
        "| pipeline | threads | front end p50 ms | model p50 ms | total p50 ms | total p95 ms | CPU ms p50 "
        "| peak RSS MiB | steady RSS MiB | of which anon MiB | GFLOP/s | % of matmul peak | % of theoretical peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {_label(r['name'])} | {r['threads']} | {r['frontend_p50']:.1f} | {r['model_p50']:.1f} "
            f"| {r['total_p50']:.1f} | {r['total_p95']:.1f} | {r['cpu_p50']:.1f} | {r['peak_mib']:.0f} "
            f"| {r['steady_mib']:.0f} | {r['anon_mib']:.0f} "
            f"| {r['gflops']:.1f} | {r['pct_matmul']:.0f} | {r['pct_theory']:.0f} |"
        )
    lines += [
        "",
        _front_end_note(results) + "; model = backbone + postprocess + classifier (for YAMNet the waveform "
        'model also computes its own log-mel in-graph). "batched": all patches of a window in one invoke (the '
        'backbone exported with a free batch dimension, issue 13); "per patch (before)": the same bundle, one '
        "invoke per patch, as the daemon ran it before. The TF-Hub waveform YAMNet has a fixed 15,600-sample input "
        "and always runs per patch.",
        "",
        "## Ratios against (c), the headline",
        "",
        "| pipeline | threads | speed-up (total p50) | target | speed-up (CPU time) | peak RSS reduction | target "
        "| met |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for q in ratios(results):
        lines.append(
            f"| {_label(q['name'])} | {q['threads']} | {q['speedup']:.1f}x | >= {q['speed_target']:g}x "
            f"| {q['cpu_speedup']:.1f}x | {q['rss_ratio']:.1f}x | >= {q['rss_target']:.0f}x "
            f"| {'yes' if q['met'] else '**no**'} |"
        )
    lines += ["", *_ceiling(results, rows)]
    daemon = results["daemon"]
    lines += ["", "## The daemon (`custom-sensord run`, threads 2, virtual PulseAudio mic, loopback mosquitto)", ""]
    if daemon["ready_s"]:
        lines += ["| bundle | start -> READY median s | min-max s | target |", "|---|---:|---:|---|"]
        for name, times in daemon["ready_s"].items():
            ok = "yes" if np.median(times) <= READY_TARGET_S else "**no**"
            lines.append(
                f"| {_label(name)} | {np.median(times):.2f} | {min(times):.2f}-{max(times):.2f} "
                f"| <= {READY_TARGET_S:.0f} s: {ok} |"
            )
        lines.append("")
    if daemon["live"]:
        lines += [
            "| bundle | live s | windows | CPU % (of one core) | RTF p50 | RTF p95 | peak RSS MiB | steady RSS MiB "
            "| RSS slope KiB/min |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, live in daemon["live"].items():
            lines.append(
                f"| {_label(name)} | {live['duration_s']:.0f} | {live['windows']} | {live['cpu_percent']:.1f} "
                f"| {live['rtf_p50']:.4f} | {live['rtf_p95']:.4f} | {live['peak_rss_kib'] / MIB:.0f} "
                f"| {live['steady_rss_kib'] / MIB:.0f} | {live['rss_slope_kib_per_min']:.0f} |"
            )
        lines += [
            "",
            "CPU % includes capture, resampling, level metering, MQTT and idle waiting over the whole run; RTF is the "
            "daemon's own per-window processing time over 10 s. The RSS slope over this short run is a sanity check "
            "only (it includes warm-up growth); RSS flatness over 30 minutes is measured by `bench/soak.py` "
            "(issue 9, `bench/SOAK.md`).",
        ]
    if not daemon["ready_s"] and not daemon["live"]:
        lines.append("(skipped in this run)")
    vggish_window = _window_flops("vggish-x", flops) / 1e9
    yamnet_window = _window_flops("yamnet", flops) / 1e9
    peaks = results["peaks"]
    lines += [
        "",
        "## Work per window and this CPU's peak",
        "",
        f"- VGGish: {flops['vggish_patch'] / 1e9:.3f} GFLOP per 0.96 s patch from the layer shapes "
        f"(TFLite graph count {flops.get('vggish_patch_tflite', float('nan')) / 1e9:.3f}), "
        f"x {flops['vggish_patches']} patches = **{vggish_window:.1f} GFLOP per window**.",
        f"- YAMNet: {flops['yamnet_patch'] / 1e9:.3f} GFLOP per patch, counted from the TFLite graph (2 x MACs of "
        f"every CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED from their tensor shapes), x "
        f"{flops['yamnet_patches']} patches (0.48 s hop) = **{yamnet_window:.2f} GFLOP per window** "
        f"(VGGish / YAMNet = {vggish_window / yamnet_window:.1f}).",
        "- Matmul peak (numpy float32 2048^2 GEMM, best of 5, same run): "
        + ", ".join(f"{t} thread(s) {p['gflops']:.1f} GFLOP/s" for t, p in peaks.items())
        + f"; theoretical FP32 peak {_theoretical_gflops(machine, 1):.0f} GFLOP/s per core "
        f"({machine['mhz']:.0f} MHz x 32 FLOP/cycle, AVX2 FMA on two 256-bit pipes).",
        "- GFLOP/s in the table = window FLOPs / model p50 time; for int8 modes they are integer ops.",
        "",
        "## Raspberry Pi, on paper",
        "",
        "Estimated model time per 10 s window = max(compute, weight streaming). Compute = FLOPs / (efficiency x Pi "
        "peak x threads x parallel efficiency), where efficiency is the share of this CPU's theoretical peak that the "
        "same bundle reached here on 1 thread, from its CPU ms per window (a busy machine inflates that far less than "
        "wall time; it includes the front end, so this errs slow), and parallel efficiency "
        "is assumed 0.9 on 2 threads, 0.75 on 4. Weight streaming = weight bytes x invokes per window / "
        "DRAM bandwidth, since every invoke re-reads all weights and the Pis' L2 caches hold none of these models "
        "(one invoke for a batched VGGish window, one per patch otherwise).",
        "",
        "Assumptions: Pi 4 Cortex-A72 @ 1.5 GHz (1.8 GHz boards are ~17 % faster), 16 FP32 FLOP/cycle/core "
        "(two 128-bit NEON FMA pipes), ~4 GB/s sustained DRAM reads; Pi Zero 2W Cortex-A53 @ 1.0 GHz, "
        "8 FLOP/cycle/core, ~1.5 GB/s, 512 MB RAM. Neither core has the ARMv8.2 dot-product instructions, so int8 "
        "gains less there than on x86; thermal throttling of a fan-less Pi 4 under sustained load is not modelled. "
        "Treat these as +-2x.",
        "",
        "| device | bundle | threads | compute ms | weight streaming ms | est. ms per window | est. RTF |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    estimates = pi_estimates(results)
    for e in estimates:
        lines.append(
            f"| {e['device'].split(' (')[0]} | {_label(e['name'])} | {e['threads']} | {e['compute_ms']:.0f} "
            f"| {e['stream_ms']:.0f} | {e['window_ms']:.0f} | {e['window_ms'] / (1e4):.3f} |"
        )
    lines.append("")
    for device, *_ in PI_DEVICES:
        lines.append(f"- {device}: {_recommendation(estimates, device)}.")
    lines += [
        "",
        "## How these were made",
        "",
        "- (a) VGGish bundles: `custom-convert vggish` (each quantization mode; int8 calibrated on 200 patches of "
        "the shared clips) from a TF1 checkpoint with random He-scaled weights under the official names and shapes "
        "(`testing/vggish.py`; the official file cannot be downloaded here). Latency and memory do not depend "
        "on the weight values: every layer is a dense conv or matmul whose cost is fixed by its shapes, and no "
        "runtime used exploits sparsity. The classifier is the tests' tiny one (`write_classifier`: 10x128 uint8 -> "
        "mean -> Dense(10)); a `custom-convert train` head of this size costs microseconds either way.",
        "- (b) YAMNet bundle: `custom-convert yamnet` on the shared TF-Hub waveform model, as the tests build it.",
        "- (c) seed-style baseline (bench/worker.py only, never in the daemon): resampy `kaiser_best` (its default, as "
        f"the seed called it) when the input is not 16 kHz (here {_rate(results) / 1e3:g} kHz), our numpy log-mel "
        "(same maths and cost as the reference mel_features), "
        "VGGish rebuilt as a float32 Keras model in full TensorFlow with the same weights "
        "(convert/backbones/vggish_model.py) "
        "called once on the window's 10 patches, AudioSet PCA, and a Keras MLP head (Flatten -> Dense 128 -> Dense "
        "10). Calling the models directly is faster than the `predict()` the seed used, so (c) is if anything "
        "flattered. TensorFlow intra/inter-op threads are set to the row's thread count.",
        "- Runtimes: "
        + "; ".join(sorted({f"{_label(r['name'])}: {r['runtime']}" for r in rows if r["threads"] == 1}))
        + ". All scores finite: "
        + ("yes" if all(r["finite"] for r in rows) else "**no**")
        + ".",
        "",
    ]
    return "\n".join(lines)
