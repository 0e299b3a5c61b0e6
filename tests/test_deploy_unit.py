"""deploy/custom-sensor.service: `systemd-analyze verify` finds nothing to warn about, and
`systemd-analyze security --offline=yes` rates it 2.0 or less.

`verify` checks that ExecStart= exists, so it runs against a small root tree (`--root`) holding the unit, an
executable at the venv path, and the host's own systemd units for the dependencies: every path stays the real one.
It also reports unknown keys and bad values only as warnings with exit code 0, so a clean result here means exit 0
*and* nothing on stderr; the negative tests prove that check catches each kind of mistake.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testing.unit import EXEC_START, MAX_EXPOSURE, UNIT, UNIT_NAME, exposure, prepare_root, verify_problems

WINDOW_S = 10  # the daemon's default window: the watchdog must allow for a few of them

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (systemd)")


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


def test_ingest_unit_is_hardened_like_the_sensor_unit() -> None:
    """deploy/custom-ingest.service off-line (tests/test_systemd.py also verifies and runs it in a booted Debian)."""
    ingest = UNIT.with_name("custom-ingest.service")
    value = exposure(ingest)
    assert value <= MAX_EXPOSURE, f"exposure {value} > {MAX_EXPOSURE}"
    settings = unit_settings(ingest.read_text())
    # no sd_notify in custom-ingest: Type=notify would time out every start
    assert settings["Type"] == ["exec"]
    assert settings["RestartPreventExitStatus"] == ["78"]
