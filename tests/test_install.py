"""deploy/install.sh --root: the tree, users and unit an install would leave, re-install, upgrade and uninstall.

The installer runs for real into a temporary root; the host is never touched (no apt, no systemctl against the
host, users written to the tree's own /etc/passwd by systemd-sysusers).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from testing.unit import MAX_EXPOSURE, exposure, prepare_root, verify_problems

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "deploy" / "install.sh"
HAVE_SYSUSERS = shutil.which("systemd-sysusers") is not None
EX_USAGE, EX_UNAVAILABLE, EX_CONFIG = 64, 69, 78


def run_install(tree: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(INSTALL), "--root", str(tree), *args], capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, f"install.sh failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text("sensor_id: test-01\nmqtt:\n  host: 127.0.0.1\n")
    return path


def make_bundle(folder: Path, content: bytes = b"not really a model") -> Path:
    folder.mkdir(parents=True)
    (folder / "model.tflite").write_bytes(content)
    manifest = {
        "format": "custom-sensor-bundle",
        "format_version": 1,
        "files": {"model.tflite": {"sha256": hashlib.sha256(content).hexdigest()}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def snapshot(tree: Path) -> dict[str, tuple[int, bytes | str]]:
    """path -> (mode, content or link target) for everything in the tree."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(tree.rglob("*")):
        rel = str(path.relative_to(tree))
        if path.is_symlink():
            found[rel] = (0, os.readlink(path))
        elif path.is_file():
            found[rel] = (stat.S_IMODE(path.stat().st_mode), path.read_bytes())
        else:
            found[rel] = (stat.S_IMODE(path.stat().st_mode), "dir")
    return found


def passwd_entry(tree: Path, name: str) -> list[str] | None:
    for line in (tree / "etc/passwd").read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    return None


def group_members(tree: Path, group: str) -> list[str] | None:
    for line in (tree / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return [m for m in fields[3].split(",") if m]
    return None


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -------------------------------------------------------------------------------------------------------- tests


def test_install_into_a_root_lays_out_everything(tmp_path: Path, config: Path) -> None:
    tree = tmp_path / "root"
    bundle = make_bundle(tmp_path / "bundle")
    run_install(tree, "--config", str(config), "--bundle", str(bundle))

    unit = tree / "etc/systemd/system/custom-sensor.service"
    assert unit.read_text() == (ROOT / "deploy/custom-sensor.service").read_text() and mode(unit) == 0o644
    wants = tree / "etc/systemd/system/multi-user.target.wants/custom-sensor.service"
    assert wants.is_symlink() and os.readlink(wants).endswith("/etc/systemd/system/custom-sensor.service")

    installed_config = tree / "etc/custom-sensor/config.yaml"
    assert installed_config.read_text() == config.read_text()
    assert mode(installed_config) == 0o640 and mode(installed_config.parent) == 0o750

    installed_bundle = tree / "var/lib/custom-sensor/bundle"
    assert sorted(p.name for p in installed_bundle.iterdir()) == ["manifest.json", "model.tflite"]
    assert (installed_bundle / "model.tflite").read_bytes() == (bundle / "model.tflite").read_bytes()
    assert mode(tree / "var/lib/custom-sensor") == 0o750

    sysusers = (tree / "usr/lib/sysusers.d/custom-sensor.conf").read_text().splitlines()
    assert any(line.split()[:2] == ["u", "custom-sensor"] for line in sysusers)
    assert ["m", "custom-sensor", "audio"] in [line.split() for line in sysusers]
    tmpfiles = [line.split() for line in (tree / "usr/lib/tmpfiles.d/custom-sensor.conf").read_text().splitlines()]
    assert ["d", "/var/lib/custom-sensor", "0750", "custom-sensor", "custom-sensor", "-"] in tmpfiles
    assert ["z", "/etc/custom-sensor/config.yaml", "0640", "root", "custom-sensor", "-"] in tmpfiles

    share = tree / "opt/custom-sensor/share"
    assert (share / "OPERATING.md").is_file()
    assert {p.name for p in (share / "mosquitto").iterdir()} == {"mosquitto.conf", "acl", "make-sensor-credentials.sh"}
    assert not (tree / "opt/custom-sensor/venv").exists(), "the venv is built in a root only with --with-venv"
    assert "would install apt packages:" in run_install(tree, "--config", str(config)).stdout


@pytest.mark.skipif(not HAVE_SYSUSERS, reason="needs systemd-sysusers")
def test_the_service_user_that_would_result(tmp_path: Path, config: Path) -> None:
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tree / "etc/group").write_text("root:x:0:\naudio:x:29:\n")
    password = tmp_path / "test-01.password"
    password.write_text("s3cret\n")
    password.chmod(0o644)  # as a careless copy leaves it
    run_install(tree, "--config", str(config), "--mqtt-password", str(password))
    user = passwd_entry(tree, "custom-sensor")
    assert user is not None
    uid, gid, home, shell = int(user[2]), int(user[3]), user[5], user[6]
    assert 0 < uid < 1000, "a system user"
    assert home == "/var/lib/custom-sensor" and shell == "/usr/sbin/nologin"
    assert group_members(tree, "audio") == ["custom-sensor"]
    assert group_members(tree, "custom-sensor") == []
    # Ownership in the tree uses the tree's ids, not the host's.
    assert (tree / "var/lib/custom-sensor").stat().st_uid == uid
    assert (tree / "etc/custom-sensor/config.yaml").stat().st_gid == gid
    assert (tree / "etc/custom-sensor/config.yaml").stat().st_uid == 0
    installed = tree / "etc/custom-sensor/mqtt-password"
    assert installed.read_text() == "s3cret\n" and mode(installed) == 0o640, "the broker password: group-only"
    assert (installed.stat().st_uid, installed.stat().st_gid) == (0, gid)


def test_installed_unit_verifies_and_is_hardened(tmp_path: Path, config: Path) -> None:
    tree = tmp_path / "root"
    run_install(tree, "--config", str(config))
    unit = tree / "etc/systemd/system/custom-sensor.service"
    prepare_root(tree)  # the venv's executable and the host's systemd units, which an install without venv lacks
    assert verify_problems(tree) == ""
    assert exposure(unit) <= MAX_EXPOSURE


def test_reinstall_changes_nothing(tmp_path: Path, config: Path) -> None:
    tree = tmp_path / "root"
    bundle = make_bundle(tmp_path / "bundle")
    run_install(tree, "--config", str(config), "--bundle", str(bundle))
    before = snapshot(tree)
    run_install(tree, "--config", str(config), "--bundle", str(bundle))
    after = snapshot(tree)
    assert after == before


def test_edited_config_is_kept_and_new_default_set_beside_it(tmp_path: Path, config: Path) -> None:
    tree = tmp_path / "root"
    run_install(tree, "--config", str(config))
    installed = tree / "etc/custom-sensor/config.yaml"
    edited = installed.read_text() + "log_level: DEBUG\n"
    installed.write_text(edited)
    new_default = tmp_path / "new-default.yaml"
    new_default.write_text("sensor_id: test-01\n# a newer default\n")
    for _ in range(2):
        result = run_install(tree, "--config", str(new_default))
        assert installed.read_text() == edited
        assert (tree / "etc/custom-sensor/config.yaml.dist").read_text() == new_default.read_text()
        assert "kept your edited" in result.stdout


def test_unedited_config_follows_the_new_default(tmp_path: Path, config: Path) -> None:
    tree = tmp_path / "root"
    run_install(tree, "--config", str(config))
    new_default = tmp_path / "new-default.yaml"
    new_default.write_text("sensor_id: test-01\n# a newer default\n")
    run_install(tree, "--config", str(new_default))
    assert (tree / "etc/custom-sensor/config.yaml").read_text() == new_default.read_text()
    assert not (tree / "etc/custom-sensor/config.yaml.dist").exists()


def test_bad_bundle_is_refused_and_the_installed_one_kept(tmp_path: Path, config: Path) -> None:
    tree = tmp_path / "root"
    good = make_bundle(tmp_path / "good", b"model v1")
    run_install(tree, "--config", str(config), "--bundle", str(good))
    corrupt = make_bundle(tmp_path / "corrupt", b"model v2")
    (corrupt / "model.tflite").write_bytes(b"model v2, truncated")
    result = run_install(tree, "--config", str(config), "--bundle", str(corrupt), check=False)
    assert result.returncode == EX_CONFIG
    assert "sha256" in result.stderr
    installed = tree / "var/lib/custom-sensor"
    assert (installed / "bundle/model.tflite").read_bytes() == b"model v1"
    assert [p.name for p in installed.iterdir()] == ["bundle"], "no staging folder left behind"

    newer = make_bundle(tmp_path / "newer", b"model v3")
    run_install(tree, "--config", str(config), "--bundle", str(newer))
    assert (installed / "bundle/model.tflite").read_bytes() == b"model v3"
    assert [p.name for p in installed.iterdir()] == ["bundle"]


def test_uninstall_keeps_config_and_spool_unless_purged(tmp_path: Path, config: Path) -> None:
    tree = tmp_path / "root"
    run_install(tree, "--config", str(config), "--bundle", str(make_bundle(tmp_path / "bundle")))
    spool = tree / "var/lib/custom-sensor/spool.sqlite"
    spool.write_bytes(b"queued events")

    run_install(tree, "--uninstall")
    assert not (tree / "etc/systemd/system/custom-sensor.service").exists()
    assert not (tree / "etc/systemd/system/multi-user.target.wants/custom-sensor.service").is_symlink()
    assert not (tree / "opt/custom-sensor").exists()
    assert spool.read_bytes() == b"queued events"
    assert (tree / "etc/custom-sensor/config.yaml").read_text() == config.read_text()

    run_install(tree, "--uninstall", "--purge")
    assert not (tree / "var/lib/custom-sensor").exists() and not (tree / "etc/custom-sensor").exists()
    assert not (tree / "usr/lib/sysusers.d/custom-sensor.conf").exists()
    if HAVE_SYSUSERS:
        assert passwd_entry(tree, "custom-sensor") is None
        assert "custom-sensor" not in (group_members(tree, "audio") or [])


def test_purge_removes_the_user_from_shared_groups_only(tmp_path: Path, config: Path) -> None:
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000::/home/pi:/bin/bash\n")
    (tree / "etc/group").write_text("root:x:0:\naudio:x:29:pi,custom-sensor,pulse\npi:x:1000:\n")
    run_install(tree, "--uninstall", "--purge")
    assert group_members(tree, "audio") == ["pi", "pulse"]
    assert passwd_entry(tree, "pi") is not None


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--arch", "sparc64"], EX_UNAVAILABLE, "unsupported architecture"),
        (["--frobnicate"], EX_USAGE, "unknown option"),
        (["--purge"], EX_USAGE, "--purge only goes with --uninstall"),
        (["--config", "/nonexistent/config.yaml"], EX_CONFIG, "config not found"),
        (["--bundle", "/nonexistent/bundle"], EX_CONFIG, "bundle folder not found"),
    ],
)
def test_refusals_say_why(tmp_path: Path, config: Path, args: list[str], code: int, message: str) -> None:
    extra = [] if "--config" in args else ["--config", str(config)]
    result = run_install(tmp_path / "root", *extra, *args, check=False)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_a_bundle_without_manifest_is_refused(tmp_path: Path, config: Path) -> None:
    folder = tmp_path / "not-a-bundle"
    folder.mkdir()
    (folder / "model.tflite").write_bytes(b"x")
    result = run_install(tmp_path / "root", "--config", str(config), "--bundle", str(folder), check=False)
    assert result.returncode == EX_CONFIG and "manifest.json" in result.stderr


@pytest.mark.slow
def test_with_venv_builds_a_working_entry_point(tmp_path: Path, config: Path) -> None:
    """Slow (pip installs the package and its dependencies): the venv inside the root runs custom-sensord."""
    tree = tmp_path / "root"
    run_install(tree, "--config", str(config), "--with-venv")
    exe = tree / "opt/custom-sensor/venv/bin/custom-sensord"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "run" in result.stdout


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck (apt: shellcheck)")
def test_deploy_scripts_pass_shellcheck() -> None:
    scripts = [INSTALL, ROOT / "deploy/mosquitto/make-sensor-credentials.sh"]
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def test_default_config_comes_from_the_project(tmp_path: Path) -> None:
    tree = tmp_path / "root"
    default = ROOT / "config.yaml"
    result = run_install(tree, check=False)
    if default.is_file():
        assert result.returncode == 0, result.stderr
        installed = tree / "etc/custom-sensor/config.yaml"
        assert installed.read_bytes() == default.read_bytes()
        # The daemon accepts what the installer put in place.
        check = subprocess.run(
            [sys.executable, "-c", "import sys; from custom.daemon.cli import main; sys.exit(main(sys.argv[1:]))",
             "check-config", "--config", str(installed)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
    else:
        assert result.returncode == EX_CONFIG and "pass --config PATH" in result.stderr


def test_reinstall_after_uninstall_still_knows_an_unedited_config(tmp_path: Path, config: Path) -> None:
    tree = tmp_path / "root"
    run_install(tree, "--config", str(config))
    run_install(tree, "--uninstall")
    new_default = tmp_path / "new-default.yaml"
    new_default.write_text("sensor_id: test-01\n# a newer default\n")
    run_install(tree, "--config", str(new_default))
    assert (tree / "etc/custom-sensor/config.yaml").read_text() == new_default.read_text()
    assert not (tree / "etc/custom-sensor/config.yaml.dist").exists()


def test_default_bundle_is_assembled_by_the_sensors_own_command(tmp_path: Path, shared: Path) -> None:
    """--default-bundle runs `custom-sensord bundle assemble` from the checkout's venv: the committed manifest,
    installed with the backbones it names (no TensorFlow, about a second)."""
    tree = tmp_path / "root"
    result = run_install(tree, "--default-bundle")
    assert "assembled" in result.stdout, result.stdout + result.stderr
    installed = tree / "var/lib/custom-sensor/bundle"
    assert (installed / "manifest.json").read_bytes() == (ROOT / "models/default/manifest.json").read_bytes()
