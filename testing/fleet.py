"""A street of sensors for the fleet tier: Debian 12 containers reached over SSH, and deploy/ansible run against them.

Each sensor is a booted container from testing/nspawn.py sharing the host's network, with its own sshd on its own
loopback port; the playbooks run from the host with the real `ansible-playbook` over SSH, as an operator's laptop
would. The containers' root is the systemd tier's cached Debian 12 plus a cached overlay layer holding
openssh-server and python3-apt (Ansible's apt module needs it), built once beside it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testing import nspawn

LAYER_PACKAGES = ("openssh-server", "python3-apt")
MIC_DROPIN = f"""[Service]
Environment=PULSE_SERVER=unix:{nspawn.MIC_DIR}/pulse.sock PULSE_SOURCE=vmic.monitor
"""


def ssh_layer() -> Path:
    """The cached overlay layer (an overlay upper dir) with LAYER_PACKAGES installed over the cached root: built
    once (about a minute: apt from the Debian mirror), keyed like the root so a new root gets a new layer."""
    base = nspawn.ensure_root()
    final = base.with_name(f"{base.name}-ssh-{'-'.join(LAYER_PACKAGES)}")
    if final.is_dir():
        return final
    with (nspawn.CACHE / ".nspawn.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():
            return final
        work = final.with_name(final.name + ".building")
        shutil.rmtree(work, ignore_errors=True)
        merged = nspawn.session_root(base, work)
        try:
            script = (
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
                f"{' '.join(LAYER_PACKAGES)} >/dev/null && apt-get clean"
            )
            subprocess.run(
                ["systemd-nspawn", "-q", "-D", str(merged), "--register=no", "--keep-unit", "sh", "-c", script],
                check=True,
                stdin=subprocess.DEVNULL,
                timeout=900,
            )
        finally:
            subprocess.run(["umount", str(merged)], check=False)
        os.rename(work / "upper", final)
        shutil.rmtree(work, ignore_errors=True)
    return final


@dataclass
class Host:
    """One sensor: its container and the loopback port of its sshd."""

    name: str
    sensor_id: str
    port: int
    box: nspawn.Container
    workdir: Path

    def systemctl_show(self, *props: str) -> dict[str, str]:
        out = self.box.run("systemctl", "show", "custom-sensor.service", *(f"-p{p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`custom-sensord status` on the sensor, as an operator would run it."""
        return self.box.run("/opt/custom-sensor/venv/bin/custom-sensord", "status", *args, check=False)

    def link(self, path: str) -> str:
        return os.readlink(self.box.root / path.lstrip("/"))


def boot_host(workdir: Path, shared: Path, name: str, sensor_id: str, port: int, public_key: str, clip: str) -> Host:
    """A booted sensor container with sshd on 127.0.0.1:port taking `public_key` for root, and a virtual microphone
    playing `clip` (a path in ../shared) over and over."""
    layer = ssh_layer()

    def prepare(root: Path) -> None:
        ssh = root / "root/.ssh"
        ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
        (ssh / "authorized_keys").write_text(public_key)
        (root / "etc/ssh/sshd_config.d/fleet-test.conf").write_text(
            f"Port {port}\nListenAddress 127.0.0.1\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "UseDNS no\n"
        )
        # The root carries PostgreSQL for the systemd tier's ingest unit; three of them on the shared host network
        # would fight over 5432 (and the host's own), so a sensor masks it.
        for unit in ("postgresql.service", "postgresql@.service"):
            (root / "etc/systemd/system" / unit).symlink_to("/dev/null")
        clip_dropin = root / "etc/systemd/system/vmic-player.service.d/clip.conf"
        clip_dropin.parent.mkdir(parents=True, exist_ok=True)
        clip_dropin.write_text(f"[Service]\nEnvironment=CLIP=/shared/{clip}\n")

    box = nspawn.sensor_container(workdir, None, shared, name, layers=(layer,), prepare=prepare)
    try:
        box.run("systemctl", "start", "vmic-player.service", "ssh.service")
    except BaseException:
        box.stop()
        nspawn.release(workdir)
        raise
    return Host(name, sensor_id, port, box, workdir)


def make_ssh_key(folder: Path) -> tuple[Path, str]:
    key = folder / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key, (folder / "id_ed25519.pub").read_text()


@dataclass
class PlayResult:
    returncode: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: host -> {ok, changed, unreachable, failed, skipped, rescued, ignored} (the last recap)."""
        text = self.output[self.output.rindex("PLAY RECAP") :] if "PLAY RECAP" in self.output else ""
        found = {}
        for line in text.splitlines()[1:]:
            match = re.match(r"(\S+)\s+:\s+(.*)", line)
            if match:
                found[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
        return found

    def recap_text(self) -> str:
        return self.output[self.output.rindex("PLAY RECAP") :].strip() if "PLAY RECAP" in self.output else ""


class Fleet:
    """The hosts, their inventory (written afresh for every run from `hostvars`) and ansible-playbook, run from a
    copy of the checkout (`source`): the wheel build.yml makes from it cannot change under a test."""

    def __init__(self, workdir: Path, source: Path, hosts: list[Host], key: Path, group_vars: dict[str, Any]) -> None:
        self.workdir = workdir
        self.ansible_dir = source / "deploy" / "ansible"
        self.hosts = hosts
        self.key = key
        self.group_vars = group_vars
        self.hostvars: dict[str, dict[str, Any]] = {h.name: {} for h in hosts}
        self.brokers: dict[str, dict[str, Any]] = {}
        self.extra_hosts: dict[str, dict[str, Any]] = {}  # inventory entries with no container behind them
        self.inventory = workdir / "inventory" / "inventory.yml"
        self.inventory.parent.mkdir(parents=True, exist_ok=True)
        self.plays: list[tuple[str, PlayResult]] = []

    def write_inventory(self) -> None:
        ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        hosts = {
            h.name: {
                "ansible_host": "127.0.0.1",
                "ansible_port": h.port,
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.key),
                "ansible_ssh_common_args": ssh_args,
                "custom_sensor_id": h.sensor_id,
                **self.hostvars[h.name],
            }
            for h in self.hosts
        } | self.extra_hosts
        children: dict[str, Any] = {"sensors": {"vars": self.group_vars, "hosts": hosts}}
        if self.brokers:
            children["mqtt_brokers"] = {"hosts": self.brokers}
        self.inventory.write_text(yaml.safe_dump({"all": {"children": children}}, sort_keys=False))

    def play(self, playbook: str, *args: str, timeout: float = 1800.0) -> PlayResult:
        """ansible-playbook from deploy/ansible (its ansible.cfg), with Ansible's own files in the test's folder."""
        self.write_inventory()
        home = self.workdir / "ansible-home"
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(self.ansible_dir / "ansible.cfg"),
            "ANSIBLE_HOME": str(home),
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_NOCOLOR": "1",
            "PYTHONWARNINGS": "ignore",
        }
        ansible_playbook = str(Path(sys.executable).with_name("ansible-playbook"))
        command = [ansible_playbook, "-i", str(self.inventory), f"playbooks/{playbook}", *args]
        start = time.monotonic()
        done = subprocess.run(
            command, cwd=self.ansible_dir, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        result = PlayResult(done.returncode, done.stdout + done.stderr, time.monotonic() - start)
        self.plays.append((playbook, result))
        (self.workdir / f"play-{len(self.plays):02d}-{playbook}.log").write_text(result.output)
        return result
