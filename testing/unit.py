"""Checks of the shipped systemd unit for tests: a small root tree `systemd-analyze verify --root` can check it in
(the unit, an executable at the venv path, the host's units for its dependencies), and its security exposure."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from testing.shared import ROOT

UNIT = ROOT / "deploy" / "custom-sensor.service"
UNIT_NAME = "custom-sensor.service"
EXEC_START = "/opt/custom-sensor/venv/bin/custom-sensord"
MAX_EXPOSURE = 2.0
HOST_UNITS = Path("/usr/lib/systemd/system")


def prepare_root(tree: Path, unit_text: str | None = None, with_exec: bool = True) -> Path:
    """Make `tree` a root that `systemd-analyze verify --root` can check the unit in; return the unit's path."""
    unit_path = tree / "etc/systemd/system" / UNIT_NAME
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    if unit_text is not None:
        unit_path.write_text(unit_text)
    elif not unit_path.exists():
        shutil.copyfile(UNIT, unit_path)
    if with_exec:
        stub = tree / EXEC_START.lstrip("/")
        if not stub.exists():
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
    units = tree / "usr/lib/systemd/system"
    if not units.exists():
        shutil.copytree(HOST_UNITS, units, symlinks=True)
    for tool in ("kill",):  # ExecReload=/bin/kill
        target = tree / "usr/bin" / tool
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(shutil.which(tool) or f"/bin/{tool}", target)
    if not (tree / "bin").exists():
        (tree / "bin").symlink_to("usr/bin")
    return unit_path


def verify(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={tree}", UNIT_NAME],
        capture_output=True,
        text=True,
        timeout=60,
    )


def verify_problems(tree: Path) -> str:
    """Everything `verify` complains about ("" when the unit is clean): its exit code and every line it prints."""
    result = verify(tree)
    problems = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        problems = f"exit {result.returncode}: {problems}"
    return problems


def exposure(unit_path: Path) -> float:
    """The overall exposure `systemd-analyze security --offline=yes` gives the unit file (0 safe .. 10 unsafe)."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit_path)], capture_output=True, text=True, timeout=60
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no exposure in the output:\n{result.stdout}\n{result.stderr}"
    return float(match.group(1))
