"""`custom-sensord status`: a replaying daemon writes its report where systemd's RuntimeDirectory= would be, and the
command tells a healthy sensor on its current bundle from one with a restart pending, a lost broker or no report."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from custom.daemon.status import problems
from testing.bundles import edit_manifest
from testing.daemon import daemon_config
from testing.shared import ROOT

SIREN = "data/clips/siren/us8k_102871-8-0-8.flac"


@pytest.fixture(scope="module")
def assembled(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed default bundle assembled with the shared backbones (no TensorFlow, about a second)."""
    out = tmp_path_factory.mktemp("status") / "bundle"
    command = [
        sys.executable,
        "-m",
        "custom.daemon.cli",
        "bundle",
        "assemble",
        "--prebuilt",
        str(ROOT / "models/default"),
    ]
    done = subprocess.run([*command, "--shared", str(shared), "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def status(config: Path, report: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "custom.daemon.cli", "status", "--config", str(config), "--report", str(report)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


def wait_status(config: Path, report: Path, want: int, *args: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    result = status(config, report, *args)
    while result.returncode != want and time.monotonic() < deadline:
        time.sleep(0.5)
        result = status(config, report, *args)
    return result


def test_status_follows_the_running_service(assembled, shared, broker, make_daemon, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    report = run_dir / "health.json"
    config = daemon_config(assembled, broker.port, tmp_path / "spool.sqlite", window={"length_s": 2, "hop_s": 2})
    replay = ["--input", str(shared / SIREN), "--loop"]
    daemon = make_daemon(config, args=replay, env={"RUNTIME_DIRECTORY": str(run_dir)})
    daemon.start()
    config_path = daemon.workdir / "config.yaml"
    assert config_path.is_file()

    healthy = wait_status(config_path, report, 0, "--min-windows", "2")
    assert healthy.returncode == 0, (healthy.stdout, healthy.stderr, daemon.log())
    assert "test-sensor: healthy" in healthy.stdout
    verdict = json.loads(status(config_path, report, "--json").stdout)
    assert verdict["report"]["bundle"]["sha256"] == verdict["installed_bundle_sha256"]
    assert verdict["report"]["bundle"]["windows"] >= 2

    # a new bundle on disk that the running process has not loaded yet: not healthy until it has
    newer = tmp_path / "newer"
    shutil.copytree(assembled, newer)
    edit_manifest(newer, lambda m: m.update(version="9.9.9"))
    daemon.write_config({**config, "model": {**config["model"], "bundle": str(newer)}})
    pending = status(config_path, report)
    assert pending.returncode == 69 and "restart pending" in pending.stderr, pending
    daemon.signal(signal.SIGHUP)
    reloaded = wait_status(config_path, report, 0, "--min-windows", "1")
    assert reloaded.returncode == 0, (reloaded.stderr, daemon.log())
    # windows are counted from the reload, not from the start of the process
    assert json.loads(status(config_path, report, "--json").stdout)["report"]["bundle"]["windows"] < 5

    broker.stop()
    lost = wait_status(config_path, report, 69, timeout=30)
    assert "not connected to the broker" in lost.stderr, lost
    broker.start()
    assert daemon.stop() == 0


def test_no_report_and_a_stale_report_are_not_healthy(assembled, tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"sensor_id: s1\nmodel:\n  bundle: {assembled}\n")
    missing = status(config_path, tmp_path / "none.json")
    assert missing.returncode == 69 and "is the service running?" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: 0\n")
    assert status(bad, tmp_path / "none.json").returncode == 78

    report = {"bundle": {"sha256": "a" * 64, "windows": 3}, "audio": {"mic": "up"}, "mqtt": {"connected": True}}
    assert problems(report, 5.0, 30.0, "a" * 64, 2) == []
    assert "stalled" in problems(report, 31.0, 30.0, "a" * 64, 2)[0]
    assert "waiting for 4" in problems(report, 5.0, 30.0, "a" * 64, 4)[0]
    down = {**report, "audio": {"mic": "down", "last_error": "device unplugged"}}
    assert problems(down, 5.0, 30.0, "a" * 64, 0) == ["microphone down: device unplugged"]
