"""`custom-sensord status`: what the running service last reported, read on the sensor itself.

The health message goes to the broker, which a shell on the sensor cannot read without a reader's login (and which
may be down). So the service also rewrites the same report, after every window and every health tick, to
`$RUNTIME_DIRECTORY/health.json`: /run/custom-sensor, a tmpfs (no SD-card wear) that systemd empties when the service
stops, so a stopped or crashed service leaves no report that could pass for a live one.

Fleet tooling waits on this command: deploy/ansible's update.yml keeps a freshly updated canary until it exits 0
with `--min-windows 2`, i.e. the new bundle is the one running, windows are being classified with it, the broker
connection is up and the microphone works.

Exit codes: 0 healthy, 69 not running or not healthy (the reasons on stderr, or in the JSON), 78 bad config.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from custom.wire import exitcodes

if TYPE_CHECKING:
    from .config import Config

REPORT_NAME = "health.json"
DEFAULT_REPORT = Path("/run/custom-sensor") / REPORT_NAME
MIN_MAX_AGE_S = 30.0  # a report is stale after 3 window hops, never sooner than this


def report_path_from_environment() -> Path | None:
    """Where the service writes its report: systemd's RuntimeDirectory= (none outside systemd: nothing written)."""
    folder = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(folder) / REPORT_NAME if folder else None


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Replace the report atomically (a reader never sees half a file), stamped with the wall-clock time."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**report, "written_at": time.time()}) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def installed_bundle_sha256(bundle: Path) -> str | None:
    """The sha256 of the manifest the config points at (the daemon's bundle id), None if unreadable."""
    from .model.bundle import MANIFEST_NAME

    try:
        return hashlib.sha256((bundle / MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError:
        return None


def problems(
    report: dict[str, Any], age_s: float, max_age_s: float, installed: str | None, min_windows: int
) -> list[str]:
    """Every reason the report is not a healthy, up-to-date sensor; empty when it is."""
    found = []
    if age_s > max_age_s:
        found.append(f"last report is {age_s:.0f} s old (more than {max_age_s:.0f} s): the service is stalled")
    running = report.get("bundle", {})
    if installed is None:
        found.append("the configured model.bundle has no readable manifest.json")
    elif running.get("sha256") != installed:
        found.append(
            f"running bundle sha256 {str(running.get('sha256'))[:12]}, installed {installed[:12]}: restart pending"
        )
    windows = int(running.get("windows", 0))
    if windows < min_windows:
        found.append(f"{windows} windows classified with the running bundle, waiting for {min_windows}")
    if (report.get("audio") or {}).get("mic") == "down":
        found.append(f"microphone down: {(report.get('audio') or {}).get('last_error')}")
    mqtt = report.get("mqtt") or {}
    if not mqtt.get("connected"):
        found.append(f"not connected to the broker: {mqtt.get('last_error')}")
    return found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help=f"report file (default {DEFAULT_REPORT})")
    parser.add_argument(
        "--min-windows", type=int, default=0, help="unhealthy until this many windows ran on the running bundle"
    )
    parser.add_argument("--json", action="store_true", help="print the report and the verdict as one JSON object")


def run(args: argparse.Namespace, config: Config) -> int:
    installed = installed_bundle_sha256(config.model.bundle)
    try:
        report = json.loads(args.report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        report = {}
        found = [f"no report in {args.report} ({getattr(exc, 'strerror', None) or exc}): is the service running?"]
    else:
        age = time.time() - float(report.get("written_at", 0.0))
        max_age = max(MIN_MAX_AGE_S, 3 * config.window.hop_s)
        found = problems(report, age, max_age, installed, args.min_windows)
    if args.json:
        verdict = {"healthy": not found, "problems": found, "installed_bundle_sha256": installed, "report": report}
        print(json.dumps(verdict))
    else:
        bundle = report.get("bundle", {})
        verdict_word = "healthy" if not found else "NOT healthy"
        print(
            f"{config.sensor_id}: {verdict_word}, bundle {bundle.get('id')} ({str(bundle.get('sha256'))[:12]}, "
            f"{bundle.get('windows', 0)} windows), version {report.get('version')}"
        )
        for problem in found:
            print(f"custom-sensord: {problem}", file=sys.stderr)
    return exitcodes.OK if not found else exitcodes.UNAVAILABLE
