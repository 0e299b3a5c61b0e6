"""deploy/custom-sensor.service: `systemd-analyze verify` finds nothing to warn about, and
`systemd-analyze security --offline=yes` rates it 2.0 or less.

`verify` checks that ExecStart= exists, so it runs against a small root tree (`--root`) holding the unit, an
executable at the venv path, and the host's own systemd units for the dependencies: every path stays the real one.
It also reports unknown keys and bad values only as warnings with exit code 0, so a clean result here means exit 0
*and* nothing on stderr; the negative tests prove that check catches each kind of mistake.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "custom-sensor.service"
UNIT_NAME = "custom-sensor.service"
EXEC_START = "/opt/custom-sensor/venv/bin/custom-sensord"
MAX_EXPOSURE = 2.0
WINDOW_S = 10  # the daemon's default window: the watchdog must allow for a few of them
HOST_UNITS = Path("/usr/lib/systemd/system")

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (systemd)")


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


def unit_settings(text: str) -> dict[str, list[str]]:
    """key -> values in file order (systemd keys may repeat), comments dropped."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# -------------------------------------------------------------------------------------------------------- tests


def test_unit_verifies_clean(tmp_path: Path) -> None:
    prepare_root(tmp_path)
    assert verify_problems(tmp_path) == ""


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        (("Type=notify", "Type=notify\nWatchDogSecs=60"), "Unknown key"),  # a misspelt key
        (("Type=notify", "Type=notfy"), "Failed to parse service type"),  # a bad value
        (("[Install]", "[Instal]"), "Unknown section"),
    ],
)
def test_verify_check_catches_mistakes(tmp_path: Path, mistake: tuple[str, str], expected: str) -> None:
    text = UNIT.read_text()
    assert mistake[0] in text
    prepare_root(tmp_path, text.replace(mistake[0], mistake[1], 1))
    assert expected in verify_problems(tmp_path)


def test_verify_check_catches_a_missing_exec_start(tmp_path: Path) -> None:
    prepare_root(tmp_path, with_exec=False)
    assert "is not executable" in verify_problems(tmp_path)


def test_security_exposure_is_at_most_two(tmp_path: Path) -> None:
    value = exposure(UNIT)
    assert value <= MAX_EXPOSURE, f"exposure {value} > {MAX_EXPOSURE}: run systemd-analyze security --offline=yes"


def test_exposure_parser_sees_an_unhardened_unit(tmp_path: Path) -> None:
    bare = tmp_path / UNIT_NAME
    bare.write_text(f"[Service]\nType=notify\nExecStart={EXEC_START} run\n")
    assert exposure(bare) > MAX_EXPOSURE


def test_unit_has_what_the_daemon_and_the_issue_require() -> None:
    s = unit_settings(UNIT.read_text())
    one = {key: values[-1] for key, values in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == f"{EXEC_START} run --config /etc/custom-sensor/config.yaml"
    assert "-HUP $MAINPID" in one["ExecReload"]
    watchdog_s = int(one["WatchdogSec"].rstrip("s"))
    assert 3 * WINDOW_S <= watchdog_s <= 10 * WINDOW_S, "the watchdog should allow a few windows, not many"
    assert one["Restart"] == "on-failure" and int(one["RestartSec"].rstrip("s")) >= 5
    assert "78" in one["RestartPreventExitStatus"].split(), "a bad config (exit 78) must not restart-loop"
    assert {"StartLimitIntervalSec", "StartLimitBurst"} <= one.keys()
    assert one["User"] == "custom-sensor" and "audio" in one["SupplementaryGroups"].split()
    assert one["StateDirectory"] == "custom-sensor" and one["ConfigurationDirectory"] == "custom-sensor"
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "yes" and one["PrivateTmp"] == "yes"
    assert one["NoNewPrivileges"] == "yes" and one["DevicePolicy"] == "closed"
    assert "char-alsa" in one["DeviceAllow"]
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert s["SystemCallFilter"][0] == "@system-service"
    assert one["MemoryMax"].endswith("M") and int(one["MemoryMax"][:-1]) >= 200
    assert one["CapabilityBoundingSet"] == ""
