"""The fleet tier: deploy/ansible's playbooks run with the real ansible-playbook over SSH against three booted
Debian 12 containers (testing/fleet.py), each a sensor with a virtual microphone, all publishing to one mosquitto on
host loopback with per-sensor passwords.

The scenarios share the street and run in file order, as an operator would go: install, re-run, change config,
move one, ship a good bundle, try a broken one, rotate the passwords, calibrate, then a config the sensors refuse
and an unreachable host. Opt-in (about 9 minutes on a shared 2-core machine, more on a cold pip cache):
`pytest -m fleet`. Each play's recap and time is printed at the end of the module (-s) and kept in its log file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing import nspawn
from testing.broker import Broker, Subscriber, free_port
from testing.bundles import edit_manifest
from testing.fleet import MIC_DROPIN, Fleet, Host, boot_host, make_ssh_key
from testing.shared import ROOT

pytestmark = pytest.mark.fleet

SENSORS = ("fleet-1", "fleet-2", "fleet-3")
CLIP = "data/clips/siren/us8k_102871-8-0-8.flac"
EVENTS = "custom/+/events"


def require_tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("the fleet tier needs root (systemd-nspawn, nsenter): run it via tests/run.sh")
    for tool in ("systemd-nspawn", "debootstrap", "nsenter", "ssh", "ssh-keygen", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: tests/run.sh installs it")


def set_password(passwd: Path, user: str, password: str) -> None:
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True, timeout=10)


def manifest_sha(bundle: Path) -> str:
    import hashlib

    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


def events_by(subscriber: Subscriber, sensor: str) -> list[dict[str, Any]]:
    return [m.json() for m in subscriber.on(f"custom/{sensor}/events")]


def can_publish(port: int, user: str, password: str) -> bool:
    done = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-u", user, "-P", password, "-t", f"custom/{user}/x",
         "-m", "x", "-q", "1"], capture_output=True, timeout=20,
    )  # fmt: skip
    return done.returncode == 0


class Street:
    """The fleet plus the broker and a reader watching every sensor's events."""

    def __init__(self, fleet: Fleet, broker: Broker, passwd: Path, reader: Subscriber, bundles: Path) -> None:
        self.fleet = fleet
        self.broker = broker
        self.passwd = passwd
        self.reader = reader
        self.bundles = bundles

    def play(self, playbook: str, *args: str) -> Any:
        return self.fleet.play(playbook, "-e", f"custom_sensor_build_dir={self.fleet.workdir / 'wheel'}", *args)

    def wait_events(self, predicate: Any, timeout: float = 120.0) -> bool:
        """Wait until every sensor has an event (received after now) for which predicate(event) holds."""
        seen = {s: len(events_by(self.reader, s)) for s in SENSORS}

        def ready(_: Any) -> bool:
            return all(any(predicate(e) for e in events_by(self.reader, s)[seen[s] :]) for s in SENSORS)

        return self.reader.wait_for(ready, timeout)


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Iterator[Street]:
    require_tools()
    workdir = tmp_path_factory.mktemp("fleet")
    bundle = workdir / "bundles" / "default"
    assembled = subprocess.run(
        [sys_python(), "-m", "custom.daemon.cli", "bundle", "assemble", "--prebuilt", str(ROOT / "models/default"),
         "--shared", str(shared), "--out", str(bundle)], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert assembled.returncode == 0, assembled.stderr
    passwd = workdir / "mosquitto.passwd"
    passwords = {s: f"first-{s}-password" for s in SENSORS}
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "reader", "reader-password"], check=True)
    for sensor, password in passwords.items():
        set_password(passwd, sensor, password)
    broker = Broker(workdir / "broker", free_port(), extra_config=f"password_file {passwd}")
    broker.workdir.mkdir()
    broker.start()
    key, public_key = make_ssh_key(workdir)
    hosts: list[Host] = []
    reader: Subscriber | None = None
    try:
        for index, sensor in enumerate(SENSORS):
            hosts.append(
                boot_host(workdir / sensor, shared, f"custom-fleet-{broker.port}-{index}", sensor, free_port(),
                          public_key, CLIP)
            )  # fmt: skip
        group_vars = {
            "custom_sensor_mqtt_host": "127.0.0.1",
            "custom_sensor_mqtt_port": broker.port,
            "custom_sensor_bundle": str(bundle),
            "custom_sensor_unit_dropin": MIC_DROPIN,
            "custom_sensor_pip_environment": {"PIP_CERT": str(nspawn.HOST_CA), "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            "custom_sensor_apt_cache_valid_time": 10 * 365 * 86400,  # the layer's apt lists: no mirror at test time
            "custom_sensor_config_extra": {
                "window": {"length_s": 2.0, "hop_s": 2.0},
                "model": {"threads": 1},
                "mqtt": {"reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
                "health_interval_s": 2.0,
            },
        }
        source = workdir / "source"
        nspawn.copy_source(ROOT, source)
        fleet = Fleet(workdir, source, hosts, key, group_vars)
        for index, host in enumerate(hosts):
            fleet.hostvars[host.name] = {
                "custom_sensor_location": {"lat": 40.4169 + index / 1000, "lon": -3.7035, "name": f"lamp {index}"},
                "custom_sensor_mqtt_password": passwords[host.sensor_id],
            }
        reader = Subscriber("127.0.0.1", broker.port, [EVENTS])
        reader.client.username_pw_set("reader", "reader-password")
        reader.start()
        yield Street(fleet, broker, passwd, reader, workdir / "bundles")
        for playbook, result in fleet.plays:
            print(f"\n--- {playbook}: exit {result.returncode}, {result.seconds:.0f} s\n{result.recap_text()}")
    finally:
        if reader is not None:
            reader.stop()
        for host in hosts:
            host.box.stop()
            nspawn.release(host.workdir)
        broker.stop()


def sys_python() -> str:
    import sys

    return sys.executable


def sensor_hosts(recap: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {name: counts for name, counts in recap.items() if name != "localhost"}


def test_first_install_of_three_sensors_publishes_from_all(street: Street) -> None:
    result = street.play("site.yml")
    assert result.returncode == 0, result.output[-6000:]
    recap = sensor_hosts(result.recap())
    assert len(recap) == 3 and all(c["failed"] == 0 and c["changed"] > 0 for c in recap.values()), recap
    assert street.wait_events(lambda e: True), {s: len(events_by(street.reader, s)) for s in SENSORS}
    for host in street.fleet.hosts:
        assert host.status().returncode == 0, host.status()


def test_second_run_changes_nothing(street: Street) -> None:
    result = street.play("site.yml")
    assert result.returncode == 0, result.output[-6000:]
    recap = sensor_hosts(result.recap())
    assert {name: c["changed"] for name, c in recap.items()} == {h.name: 0 for h in street.fleet.hosts}, recap


def test_config_change_reloads_in_place_and_shows_in_the_next_event(street: Street) -> None:
    pids = {h.name: h.systemctl_show("MainPID")["MainPID"] for h in street.fleet.hosts}
    for host in street.fleet.hosts:
        street.fleet.hostvars[host.name]["custom_sensor_location"]["name"] = f"moved {host.sensor_id}"
    result = street.play("site.yml")
    assert result.returncode == 0, result.output[-6000:]
    assert "RUNNING HANDLER [custom_sensor : Reload custom-sensor]" in result.output
    assert {h.name: h.systemctl_show("MainPID")["MainPID"] for h in street.fleet.hosts} == pids
    assert street.wait_events(lambda e: e["location"]["name"].startswith("moved ")), result.output[-3000:]


def test_move_puts_the_new_location_in_the_next_event(street: Street) -> None:
    moved, *others = street.fleet.hosts[1:] + street.fleet.hosts[:1]
    pid = moved.systemctl_show("MainPID")["MainPID"]
    street.fleet.hostvars[moved.name]["custom_sensor_location"] = {"lat": 40.4300, "lon": -3.6900, "name": "moved on"}
    result = street.play("move.yml", "-e", f"target={moved.name}")
    assert result.returncode == 0, result.output[-6000:]
    assert set(sensor_hosts(result.recap())) == {moved.name}, result.recap()
    assert moved.systemctl_show("MainPID")["MainPID"] == pid
    seen = len(events_by(street.reader, moved.sensor_id))
    assert street.reader.wait_for(
        lambda _: any(e["location"]["name"] == "moved on" for e in events_by(street.reader, moved.sensor_id)[seen:]),
        timeout=60,
    )
    assert all("moved on" not in config_text(h) for h in others)


def test_good_bundle_reaches_all_three_one_at_a_time(street: Street) -> None:
    good = street.bundles / "good"
    shutil.copytree(street.fleet.group_vars["custom_sensor_bundle"], good)
    edit_manifest(good, lambda m: m.update(version="2.0.1"))
    sha = manifest_sha(good)
    street.fleet.group_vars["custom_sensor_bundle"] = str(good)
    result = street.play("update.yml", "-e", "batch=1")
    assert result.returncode == 0, result.output[-6000:]
    for host in street.fleet.hosts:
        verdict = json.loads(host.status("--json").stdout)
        assert verdict["healthy"] and verdict["report"]["bundle"]["sha256"] == sha, verdict
    assert street.wait_events(lambda e: e["model"]["sha256"] == sha)
    # one at a time: each sensor's first window on the new bundle starts after the one before had two of them
    new = [[e["window"]["start"] for e in events_by(street.reader, s) if e["model"]["sha256"] == sha] for s in SENSORS]
    for before, after in zip(new, new[1:], strict=False):
        assert len([t for t in before if t < after[0]]) >= 2, new


def test_broken_bundle_stops_at_the_canary_which_is_rolled_back(street: Street) -> None:
    running = street.fleet.group_vars["custom_sensor_bundle"]
    broken = street.bundles / "broken"
    shutil.copytree(running, broken)
    edit_manifest(broken, lambda m: m["files"]["head_yamnet.tflite"].update(sha256="0" * 64))
    canary, *others = street.fleet.hosts
    before = {h.name: (h.systemctl_show("MainPID")["MainPID"], h.link("/var/lib/custom-sensor/bundle")) for h in others}
    street.fleet.group_vars["custom_sensor_bundle"] = str(broken)
    try:
        result = street.play("update.yml")
    finally:
        street.fleet.group_vars["custom_sensor_bundle"] = running
    assert result.returncode != 0
    stopped = re.search(rf"update stopped at {canary.name} \({canary.sensor_id}\): (.*)", result.output)
    # the reason is the daemon's own line from the failed start, and the rollback is said
    assert stopped and "cannot start: model.bundle:" in stopped.group(1), result.output[-6000:]
    assert "head_yamnet.tflite" in stopped.group(1) and "Rolled back" in stopped.group(1), stopped.group(1)
    recap = sensor_hosts(result.recap())
    assert recap[canary.name]["rescued"] == 1 and recap[canary.name]["failed"] == 1, recap
    assert all(recap[h.name]["changed"] == 0 for h in others), recap  # only the preflight's ping reached them
    verdict = json.loads(canary.status("--json").stdout)
    assert verdict["healthy"] and verdict["report"]["bundle"]["sha256"] == manifest_sha(Path(running)), verdict
    assert street.wait_events(lambda e: e["model"]["sha256"] == manifest_sha(Path(running)))
    after = {h.name: (h.systemctl_show("MainPID")["MainPID"], h.link("/var/lib/custom-sensor/bundle")) for h in others}
    assert after == before
    broken_id = manifest_sha(broken)[:12]
    for host in others:
        assert not (host.box.root / f"var/lib/custom-sensor/bundles/{broken_id}").exists()


def test_credential_rotation_leaves_all_three_publishing(street: Street) -> None:
    old = {h.name: street.fleet.hostvars[h.name]["custom_sensor_mqtt_password"] for h in street.fleet.hosts}
    for host in street.fleet.hosts:
        street.fleet.hostvars[host.name]["custom_sensor_mqtt_password"] = f"second-{host.sensor_id}-password"
    assert street.broker.process is not None
    street.fleet.brokers = {
        "test-broker": {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys_python(),
            "mqtt_broker_passwd_file": str(street.passwd),
            "mqtt_broker_reload_command": f"kill -HUP {street.broker.process.pid}",
        }
    }
    result = street.play("rotate-credentials.yml")
    assert result.returncode == 0, result.output[-6000:]
    assert street.wait_events(lambda e: True), result.output[-3000:]
    for host in street.fleet.hosts:
        assert not can_publish(street.broker.port, host.sensor_id, old[host.name])
        files = sorted(p.name for p in (host.box.root / "etc/custom-sensor").glob("mqtt-password-*"))
        assert len(files) == 1, files
        assert host.status().returncode == 0, host.status()


def test_calibration_keeps_the_offset_in_the_inventory(street: Street) -> None:
    """A steady 1 kHz tone (the calibrator) into the first sensor's virtual mic for the measurement."""
    import numpy as np
    import soundfile

    host = street.fleet.hosts[0]
    rate = 16000
    tone = 0.1 * np.sin(2 * np.pi * 1000.0 * np.arange(30 * rate) / rate)
    soundfile.write(host.box.root / "root/tone.wav", tone.astype(np.float32), rate, subtype="FLOAT")
    play_clip(host, "/root/tone.wav")
    environment = {"PULSE_SERVER": f"unix:{nspawn.MIC_DIR}/pulse.sock", "PULSE_SOURCE": "vmic.monitor"}
    street.fleet.hostvars[host.name]["custom_sensor_calibrate_environment"] = environment
    try:
        result = street.play("calibrate.yml", "-e", f"target={host.name}", "-e", "reference_db=94.0", "-e", "seconds=3")
    finally:
        play_clip(host, f"/shared/{CLIP}")
    assert result.returncode == 0, result.output[-6000:]
    kept = yaml.safe_load((street.fleet.inventory.parent / "host_vars" / f"{host.name}.yml").read_text())
    offset = kept["custom_sensor_calibration_db"]
    assert isinstance(offset, float) and 60.0 < offset < 160.0, kept
    assert yaml.safe_load(config_text(host))["audio"]["calibration_db"] == offset
    assert host.status().returncode == 0, host.status()
    assert street.wait_events(lambda e: True)


def play_clip(host: Host, path: str) -> None:
    dropin = host.box.root / "etc/systemd/system/vmic-player.service.d/clip.conf"
    dropin.write_text(f"[Service]\nEnvironment=CLIP={path}\n")
    host.box.run("systemctl", "daemon-reload")
    host.box.run("systemctl", "restart", "vmic-player.service")


def test_config_the_sensors_refuse_is_never_installed(street: Street) -> None:
    extra = street.fleet.group_vars["custom_sensor_config_extra"]
    before = {h.name: (h.systemctl_show("MainPID")["MainPID"], config_text(h)) for h in street.fleet.hosts}
    street.fleet.group_vars["custom_sensor_config_extra"] = {**extra, "window": {"length_s": 2.0, "hop_s": -1}}
    try:
        result = street.play("site.yml")
    finally:
        street.fleet.group_vars["custom_sensor_config_extra"] = extra
    assert result.returncode != 0
    assert "window.hop_s" in result.output, result.output[-4000:]
    assert {h.name: (h.systemctl_show("MainPID")["MainPID"], config_text(h)) for h in street.fleet.hosts} == before
    assert street.wait_events(lambda e: True)


def test_unreachable_sensor_stops_the_play_before_any_change(street: Street) -> None:
    street.fleet.extra_hosts = {
        "lamp-offline": {
            "ansible_host": "127.0.0.1", "ansible_port": free_port(), "ansible_user": "root",
            "custom_sensor_id": "offline", "custom_sensor_location": {"lat": 40.0, "lon": -3.0},
            "custom_sensor_mqtt_password": "x",
        }
    }  # fmt: skip
    for host in street.fleet.hosts:
        street.fleet.hostvars[host.name]["custom_sensor_location"]["name"] = f"never {host.sensor_id}"
    try:
        result = street.play("site.yml")
    finally:
        street.fleet.extra_hosts = {}
        for host in street.fleet.hosts:
            street.fleet.hostvars[host.name]["custom_sensor_location"]["name"] = f"moved {host.sensor_id}"
    assert result.returncode != 0
    assert "lamp-offline" in result.output and "UNREACHABLE" in result.output, result.output[-4000:]
    assert all("never" not in config_text(h) for h in street.fleet.hosts)
    assert all(c["changed"] == 0 for c in sensor_hosts(result.recap()).values()), result.recap()


def config_text(host: Host) -> str:
    return (host.box.root / "etc/custom-sensor/config.yaml").read_text()
