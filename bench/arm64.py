"""`python -m bench.arm64 BUNDLE`: emulated per-window time of `custom-sensord classify` in the arm64 chroot.

Runs the same command on the same real clips on this x86 host and, through testing/arm64.py, in the arm64 Debian 12
chroot under qemu-user with QEMU_CPU=cortex-a72, once per TFLite runtime; prints a markdown table (per-window
`processing_ms` as the events report it, wall time of the whole command, the largest score difference from x86).
The arm64 figures are qemu emulating a Cortex-A72 on whatever this host is: they show relative cost and catch
regressions, they are not what a Raspberry Pi measures. Needs root (see testing/arm64.py).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testing import arm64
from testing.shared import shared_dir


def host_cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def summarise(name: str, events: dict[tuple[str, float], dict[str, Any]], wall_s: float, ref: Any) -> str:
    ms = [event["processing_ms"] for event in events.values()]
    diffs = [abs(s - ref[key]["scores"][c]) for key, event in events.items() for c, s in event["scores"].items()]
    tops = sum(event["top"]["name"] == ref[key]["top"]["name"] for key, event in events.items())
    return (
        f"| {name} | {len(events)} | {statistics.median(ms):.0f} | {statistics.mean(ms):.0f} | {max(ms):.0f} "
        f"| {wall_s:.1f} | {max(diffs):.4f} | {statistics.mean(diffs):.4f} | {tops}/{len(events)} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="bundle folder (e.g. built by custom-convert default-bundle)")
    parser.add_argument("--clips", type=int, default=20, help="real clips from ../shared (default 20)")
    parser.add_argument("--threads", type=int, default=None, help="TFLite threads (default: the daemon's)")
    args = parser.parse_args(argv)
    shared = shared_dir()
    clips = arm64.pick_clips(shared, args.clips)
    threads = [] if args.threads is None else ["--threads", str(args.threads)]

    prefix = f"{shared / 'data/clips'}/"
    start = time.monotonic()
    host = subprocess.run(
        [str(Path(sys.executable).with_name("custom-sensord")), "classify", "--json", "--bundle", str(args.bundle),
         *threads, *(prefix + c for c in clips)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    host_wall = time.monotonic() - start
    ref = arm64.scores_by_window(host.stdout, prefix)
    rows = [summarise(f"{platform.machine()} host ({host_cpu()}), ai_edge_litert", ref, host_wall, ref)]

    arm_prefix = f"{arm64.SHARED_MOUNT}/data/clips/"
    with arm64.arm64_run(bundle=args.bundle, shared=shared) as run:
        for runtime in arm64.VENVS:
            installed = run.install_checkout(runtime)
            if installed.returncode != 0:
                print(installed.stderr, file=sys.stderr)
                return 1
            command = [run.command(runtime), "classify", "--json", "--bundle", arm64.BUNDLE_MOUNT, *threads]
            start = time.monotonic()
            result = run.run([*command, *(arm_prefix + c for c in clips)])
            wall = time.monotonic() - start
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return 1
            events = arm64.scores_by_window(result.stdout, arm_prefix)
            rows.append(
                summarise(f"arm64 qemu-user QEMU_CPU={arm64.QEMU_CPU} (emulated), {runtime}", events, wall, ref)
            )

    print(f"# arm64 (emulated) vs x86: `custom-sensord classify` on {len(clips)} clips, bundle {args.bundle.name}\n")
    print(
        "| platform, runtime | windows | per-window ms median | mean | max | command wall s "
        "| max score diff vs x86 | mean diff | same top |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
