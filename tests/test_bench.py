"""The bench runs and reports: a smoke run on a narrow VGGish, and the report on made-up numbers.

No timing is asserted anywhere (the machines are shared and noisy): only that every row is there and every number
in it is finite.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.common import parse_result

ROOT = Path(__file__).resolve().parent.parent
BENCH_TIMEOUT_S = 900.0  # the narrow VGGish conversion plus a TensorFlow import, on a loaded 2-core machine


def _finite_numbers(value: object) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _finite_numbers(v)]
    return []


def _table_rows(markdown: str, header_start: str) -> list[list[str]]:
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_bench_smoke_on_tiny_model(tmp_path: Path, yamnet_bundle: Path) -> None:
    out, raw = tmp_path / "RESULTS.md", tmp_path / "raw.json"
    command = [
        sys.executable, "-m", "bench", "--tiny", "--threads", "1", "--ready-repeats", "1",
        "--live-s", "15", "--live-modes", "--yamnet-bundle", str(yamnet_bundle),
        "--work", str(tmp_path / "work"), "--out", str(out), "--json", str(raw),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    markdown = out.read_text()
    assert proc.stdout.strip() == markdown.strip()

    window_rows = _table_rows(markdown, "| pipeline | threads | front end")
    ours = [
        "(a) VGGish dynamic, batched",  # one invoke per window: the backbone takes a batch
        "(a) VGGish dynamic, per patch (before)",  # the same bundle, one invoke per patch
        "(b) YAMNet waveform",  # fixed input: per patch only
        "(b) YAMNet patch (Coral)",  # fixed reshape inside: per patch only
    ]
    assert [row[0] for row in window_rows] == [*ours, "(c) seed-style TF float"]
    for row in window_rows:
        assert all(math.isfinite(float(cell)) for cell in row[1:]), row
    ratio_rows = _table_rows(markdown, "| pipeline | threads | speed-up")
    assert [row[0] for row in ratio_rows] == ours
    assert all(float(row[2].rstrip("x")) > 0 and float(row[4].rstrip("x")) > 0 for row in ratio_rows)
    assert [row[0] for row in _table_rows(markdown, "| bundle | start -> READY")] == [
        "(a) VGGish dynamic, batched",
        "(b) YAMNet waveform",
        "(b) YAMNet patch (Coral)",
    ]
    assert [row[0] for row in _table_rows(markdown, "| bundle | live s")] == ["(b) YAMNet waveform"]
    assert "Raspberry Pi Zero 2W" in markdown

    results = json.loads(raw.read_text())
    assert all(m["scores_finite"] for m in results["measurements"])
    for m in results["measurements"]:
        numbers = _finite_numbers({k: m[k] for k in ("frontend_ms", "model_ms", "total_ms", "peak_rss_kib")})
        assert numbers and all(math.isfinite(x) and x > 0 for x in numbers), m["pipeline"]
    live = results["daemon"]["live"]["yamnet"]  # how many windows fit in 15 s depends on load: not asserted
    assert math.isfinite(live["cpu_percent"]) and live["peak_rss_kib"] > 0


def _fake_results() -> dict:
    measurement = {
        "frontend_ms": [5.0, 6.0], "model_ms": [20.0, 22.0], "total_ms": [25.0, 28.0], "ready_s": 0.3,
        "peak_rss_kib": 90_000, "steady_rss_kib": 80_000, "runtime": "ai_edge_litert", "scores_finite": True,
    }  # fmt: skip
    baseline = {
        **measurement, "model_ms": [150.0], "total_ms": [400.0], "peak_rss_kib": 1_500_000, "runtime": "tensorflow",
    }  # fmt: skip
    return {
        "machine": {
            "command": "python -m bench",
            "date_utc": "2026-01-01 00:00 UTC",
            "bench_minutes": 1.0,
            "cpu": "x",
            "cores": 2,
            "mhz": 2000.0,
            "simd": "avx2 fma avx",
            "memory_gib": 8.0,
            "kernel": "k",
            "python": "3.11",
            "versions": {"numpy": "2"},
            "load_before": ["0", "0", "0"],
            "load_after": ["0", "0", "0"],
        },  # fmt: skip
        "args": {"warmup": 3, "windows": 20},
        "measurements": [
            {"pipeline": name, "threads": t, **(baseline if name == "baseline" else measurement)}
            for t in (1, 2)
            for name in ("vggish-int8", "yamnet", "baseline")
        ],
        "peaks": {"1": {"gflops": 50.0, "blas": "openblas"}, "2": {"gflops": 90.0, "blas": "openblas"}},
        "daemon": {"ready_s": {"yamnet": [0.9, 1.1]}, "live": {}},
        "flops": {"vggish_patch": 1.73e9, "vggish_patches": 10, "yamnet_patch": 1.4e8, "yamnet_patches": 19},
        "model_bytes": {"vggish-int8": 72 * 2**20, "yamnet": 4 * 2**20},
    }


def test_report_rows_and_ratios() -> None:
    results = _fake_results()
    markdown = report.render(results)
    rows = _table_rows(markdown, "| pipeline | threads | front end")
    assert len(rows) == 6
    ratios = report.ratios(results)
    assert {(q["name"], q["threads"]) for q in ratios} == {(n, t) for n in ("vggish-int8", "yamnet") for t in (1, 2)}
    assert all(q["speedup"] == pytest.approx(400.0 / 26.5) for q in ratios)
    assert all(q["rss_ratio"] == pytest.approx(1_500_000 / 90_000) for q in ratios)
    estimates = report.pi_estimates(results)
    assert estimates and all(math.isfinite(e["window_ms"]) and e["window_ms"] > 0 for e in estimates)
    assert "| (b) YAMNet waveform | 1.00 |" in markdown  # start -> READY median


def test_worker_result_line_is_found_among_chatter() -> None:
    assert parse_result('INFO: chatter\nBENCH_RESULT {"a": 1}\nmore chatter\n') == {"a": 1}
    with pytest.raises(ValueError):
        parse_result("no result here")


def test_a_cached_bundle_is_reused_only_while_the_converter_and_its_data_are_unchanged(
    tmp_path: Path, monkeypatch
) -> None:
    """A bundle left under bench/.work by an older converter, or built from older ../shared data, must be rebuilt,
    not timed as if it were today's."""
    from bench import common

    sources = tmp_path / "convert"
    sources.mkdir()
    (sources / "veto.py").write_text("SCALE = 0.0\n")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    monkeypatch.setattr(common, "BUNDLE_SOURCES", (sources,))
    shared = tmp_path / "shared"
    (shared / "data/clips").mkdir(parents=True)
    (shared / "data/clips/manifest.csv").write_text("path,label\n")
    monkeypatch.setattr(common, "shared_dir", lambda: shared)
    out = tmp_path / "work" / "bundle"
    command = ["head", "--ship", "averaged"]
    assert not common.cached_bundle(out, command)  # nothing built yet
    out.mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    assert not common.cached_bundle(out, command)  # no recipe: built before recipes were recorded, or interrupted
    common.mark_bundle(out, command)
    assert common.cached_bundle(out, command)
    assert not common.cached_bundle(out, ["head", "--ship", "yamnet"])  # another command
    (sources / "veto.py").write_text("SCALE = 0.1\n")
    assert not common.cached_bundle(out, command)  # the converter changed
    common.mark_bundle(out, command)
    (shared / "data/clips/manifest.csv").write_text("path,label\ndog/new.flac,dog\n")
    assert not common.cached_bundle(out, command)  # ../shared gained a recording
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # the recipe never sits inside the bundle
