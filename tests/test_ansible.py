"""deploy/ansible without a fleet (seconds; the fleet tier, tests/test_fleet.py, runs the playbooks for real): every
playbook parses, a bad inventory stops before any host is touched, and the role renders a config the daemon takes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testing.shared import ROOT

ANSIBLE_DIR = ROOT / "deploy" / "ansible"
PLAYBOOKS = sorted(p.name for p in (ANSIBLE_DIR / "playbooks").glob("*.yml"))


def ansible_playbook(tmp_path: Path, inventory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = Path(sys.executable).with_name("ansible-playbook")
    if not command.is_file():
        pytest.fail("ansible-playbook not found: tests/run.sh installs the ansible extra (ansible-core)")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "PYTHONWARNINGS": "ignore",
    }
    return subprocess.run(
        [str(command), "-i", str(inventory), *args], cwd=ANSIBLE_DIR, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_parses(playbook: str, tmp_path: Path) -> None:
    result = ansible_playbook(
        tmp_path, ANSIBLE_DIR / "inventory.example.yml", "--syntax-check", f"playbooks/{playbook}", "-e", "target=all"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_variable_stops_before_any_host_naming_host_and_variable(tmp_path: Path) -> None:
    # the hosts point at a closed loopback port: touching one would show as UNREACHABLE, not as the preflight's line
    hosts = {
        "lamp-1": {"custom_sensor_id": "s1", "custom_sensor_location": {"lat": 1.0, "lon": 2.0}},
        "lamp-2": {"custom_sensor_location": {"lat": 1.0, "lon": 2.0}},
        "lamp-3": {"custom_sensor_id": "s3", "custom_sensor_location": {"name": "no coordinates"}},
    }
    for values in hosts.values():
        values.update(ansible_host="127.0.0.1", ansible_port=1)
    group = {"custom_sensor_mqtt_host": "127.0.0.1", "custom_sensor_mqtt_password": "x"}  # no custom_sensor_bundle
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"children": {"sensors": {"vars": group, "hosts": hosts}}}}))
    result = ansible_playbook(tmp_path, inventory, "playbooks/site.yml")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    missing = "; ".join(
        ["lamp-1: custom_sensor_bundle", "lamp-2: custom_sensor_id", "lamp-2: custom_sensor_bundle",
         "lamp-3: custom_sensor_bundle"]
    )  # fmt: skip
    assert f"missing required variable(s), no host was touched: {missing}" in output, output
    assert "UNREACHABLE" not in output and "lamp-1" not in output.split("PLAY RECAP")[-1], output

    # with every variable there, the location without coordinates is named next
    hosts["lamp-2"]["custom_sensor_id"] = "s2"
    group["custom_sensor_bundle"] = str(tmp_path)
    inventory.write_text(yaml.safe_dump({"all": {"children": {"sensors": {"vars": group, "hosts": hosts}}}}))
    output = (lambda r: r.stdout + r.stderr)(ansible_playbook(tmp_path, inventory, "playbooks/site.yml"))
    assert "lamp-3: custom_sensor_location needs lat and lon" in output and "UNREACHABLE" not in output, output


def test_rendered_config_passes_check_config(tmp_path: Path) -> None:
    """The role's template with the example inventory's values, through the daemon's own validation."""
    playbook = tmp_path / "render.yml"
    out = tmp_path / "config.yaml"
    playbook.write_text(
        yaml.safe_dump([{
            "hosts": "localhost", "gather_facts": False,
            "vars": {
                **yaml.safe_load((ANSIBLE_DIR / "roles/custom_sensor/defaults/main.yml").read_text()),
                "custom_sensor_id": "calle-mayor-01", "custom_sensor_location": {"lat": 40.4, "lon": -3.7, "name": "x"},
                "custom_sensor_mic_device": "USB Audio", "custom_sensor_calibration_db": 112.4,
                "custom_sensor_mqtt_host": "broker.example", "custom_sensor_mqtt_password": "secret",
                "custom_sensor_config_extra": {"model": {"thresholds": {"Siren": 0.3}}, "window": {"hop_s": 5}},
            },
            "tasks": [
                {"ansible.builtin.include_vars": str(ANSIBLE_DIR / "roles/custom_sensor/vars/main.yml")},
                {"ansible.builtin.template": {"src": str(ANSIBLE_DIR / "roles/custom_sensor/templates/config.yaml.j2"),
                                              "dest": str(out)}},
            ],
        }])
    )  # fmt: skip
    result = ansible_playbook(tmp_path, ANSIBLE_DIR / "inventory.example.yml", str(playbook))
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = yaml.safe_load(out.read_text())
    assert rendered["sensor_id"] == "calle-mayor-01" and rendered["audio"]["calibration_db"] == 112.4
    assert rendered["mqtt"]["username"] == "calle-mayor-01" and rendered["mqtt"]["port"] == 8883
    assert rendered["mqtt"]["password_file"].startswith("/etc/custom-sensor/mqtt-password-")
    assert rendered["model"] == {"bundle": "/var/lib/custom-sensor/bundle", "thresholds": {"Siren": 0.3}}
    # check-config wants the password file to exist: point it at a real one, as the role writes it first
    password = tmp_path / "mqtt-password"
    password.write_text("secret\n")
    rendered["mqtt"]["password_file"] = str(password)
    out.write_text(yaml.safe_dump(rendered))
    command = [sys.executable, "-m", "custom.daemon.cli", "check-config", "--config", str(out)]
    check = subprocess.run(command, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("canary", [None, "lamp-03.puerta-del-sol.example"])
def test_update_takes_the_canary_alone_then_the_others(canary: str | None, tmp_path: Path) -> None:
    args = ["--list-hosts", "playbooks/update.yml", *(["-e", f"canary={canary}"] if canary else [])]
    result = ansible_playbook(tmp_path, ANSIBLE_DIR / "inventory.example.yml", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    plays = {block.splitlines()[0].split("): ")[-1].split("\t")[0]: block for block in result.stdout.split("play #")}
    hosts = {name: re.findall(r"^\s+(lamp-\S+)$", text, re.M) for name, text in plays.items()}
    first = canary or "lamp-01.calle-mayor.example"
    assert hosts["Update the canary"] == [first], result.stdout
    assert sorted(hosts["Update the others in batches"]) == sorted(
        {"lamp-01.calle-mayor.example", "lamp-02.calle-mayor.example", "lamp-03.puerta-del-sol.example"} - {first}
    ), result.stdout


def test_only_ansible_core_modules_are_used() -> None:
    """No Galaxy collection at run time: every module is named ansible.builtin.* (a collection's would not be)."""

    def modules(node: object) -> list[str]:
        if isinstance(node, list):
            return [m for item in node for m in modules(item)]
        if not isinstance(node, dict):
            return []
        own = [key for key in node if "." in key and "name" in node]
        return own + [m for value in node.values() for m in modules(value)]

    files = [*ANSIBLE_DIR.glob("playbooks/*.yml"), *ANSIBLE_DIR.glob("roles/*/*/*.yml")]
    used = {m for path in files for m in modules(yaml.safe_load(path.read_text()))}
    assert used and all(m.startswith("ansible.builtin.") for m in used), sorted(used)
