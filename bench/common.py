"""Paths and /proc readers shared by the bench orchestrator and its worker subprocesses.

Kept free of TensorFlow and of the daemon's imports: the workers measure their own process's memory, so anything
imported here is charged to every pipeline alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testing.shared import shared_dir

__all__ = ["shared_dir"]

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = Path(os.environ.get("CUSTOM_BENCH_WORK", BENCH_DIR / ".work"))  # cached bundles, checkpoints, windows
# Issue 13 compares at the model rate: every pipeline gets the same 16 kHz windows, so no resampling is counted.
# `--input-rate 44100` brings back the earlier comparison, where (a)/(b) pay soxr as (c) pays resampy.
INPUT_RATE_HZ = 16000
WINDOW_S = 10.0
RESULT_PREFIX = "BENCH_RESULT "  # the worker's one machine-readable stdout line
# The code a cached bundle depends on: the converter writes it, daemon/model defines its format and front ends.
BUNDLE_SOURCES = (ROOT / "convert", ROOT / "daemon" / "model")
# ...and the ../shared files it reads: the backbones, and the manifests that say which recordings train a head (a
# new recording in ../shared comes with a new manifest line, so its audio need not be hashed; the backbones' 4 MB
# each cost ~10 ms).
BUNDLE_INPUTS = (
    "models/yamnet_classification.tflite", "models/efficientat_mn04_as.tflite", "data/clips/manifest.csv",
    "data/train-audio/manifest.csv", "data/holdout-recordings.sha256",
)  # fmt: skip


def bundle_recipe(command: Sequence[str]) -> str:
    """sha256 over the converter command, the sources that write and read bundles, and the ../shared files they
    read. A bench must time today's model: a bundle cached under the work dir by an older converter (say, before a
    veto rule changed) or from older data would be timed silently if its mere presence were enough, so a cached
    bundle is reused only when this still matches."""
    digest = hashlib.sha256(json.dumps(list(command)).encode())
    for folder in BUNDLE_SOURCES:
        for path in sorted(folder.rglob("*.py")):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    shared = shared_dir()
    for name in BUNDLE_INPUTS:
        path = shared / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"(missing)"))
    return digest.hexdigest()


def _recipe_file(out: Path) -> Path:
    return out.parent / f"{out.name}.recipe"  # beside the bundle: a stray file inside would not be in its manifest


def cached_bundle(out: Path, command: Sequence[str]) -> bool:
    """True if `out` holds a bundle built by `command` with today's converter (see `bundle_recipe`)."""
    recipe = _recipe_file(out)
    return (out / "manifest.json").is_file() and recipe.is_file() and recipe.read_text() == bundle_recipe(command)


def mark_bundle(out: Path, command: Sequence[str]) -> None:
    """Record which recipe built the bundle in `out`, once it is complete."""
    _recipe_file(out).write_text(bundle_recipe(command))


def proc_status_kib(field: str, pid: int | str = "self") -> int:
    """One `VmXxx:` line of /proc/PID/status in KiB (VmHWM = peak RSS, VmRSS = current RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and none of its children) in seconds, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5), counted after "pid (comm)"
    return ticks / os.sysconf("SC_CLK_TCK")


def emit(result: dict[str, Any]) -> None:
    """Print the worker's result as one tagged JSON line, so library chatter on stdout cannot be mistaken for it."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise ValueError("worker printed no result line")
