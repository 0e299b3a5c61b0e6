"""Run the real daemon (`custom-sensord run`) as a subprocess, with a test sd_notify socket to listen on."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .process import LoggedProcess

FAULT_SEAMS = ("--fault-stall-after", "--summary-period-s")  # see testing.faults


class NotifyListener:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET; records (monotonic time, message)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="notify-"))  # short path: unix sockets are limited to 108 bytes
        self.path = self.dir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, message: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == message]

    def wait_for(self, message: str, count: int = 1, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.times(message)) >= count:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(2.0)


class Daemon(LoggedProcess):
    """One `custom-sensord run` subprocess with its own config, spool and stderr log file."""

    name = "daemon"

    def __init__(self, workdir: Path, config: dict[str, Any], args: list[str], env: dict[str, str]) -> None:
        super().__init__(workdir / "daemon.log")
        self.workdir = workdir
        self.config_path = workdir / "config.yaml"
        self.write_config(config)
        self.args = args
        self.env = env

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> Daemon:
        # the product CLI, unless the test sets a fault seam, which only the test-only entry point has
        seams = any(arg in FAULT_SEAMS for arg in self.args)
        entry = ["testing.faults", "sensord"] if seams else ["custom.daemon.cli", "run"]
        command = [sys.executable, "-m", *entry, "--config", str(self.config_path), *self.args]
        self._launch(command, self.env)
        return self

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def wait_log(self, needle: str, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log():
                return True
            time.sleep(0.1)
        return False


@pytest.fixture
def notify_listener() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    yield listener
    listener.close()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Factory: make_daemon(config_dict, args=[...], env={...}); every daemon is stopped at teardown."""
    made: list[Daemon] = []

    def make(config: dict[str, Any], args: list[str] | None = None, env: dict[str, str] | None = None) -> Daemon:
        workdir = tmp_path / f"daemon{len(made)}"
        workdir.mkdir()
        daemon = Daemon(workdir, config, args or [], {**os.environ, **(env or {})})
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.reap()


def daemon_config(bundle: Path, broker_port: int, spool: Path, **overrides: Any) -> dict[str, Any]:
    """A config for tests: loopback broker, spool in the test's folder, frequent health."""
    config: dict[str, Any] = {
        "sensor_id": "test-sensor",
        "location": {"lat": 40.4169, "lon": -3.7035, "name": "Puerta del Sol", "street": "Calle Mayor 1"},
        "model": {"bundle": str(bundle), "threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        "spool": {"path": str(spool)},
        "health_interval_s": 2.0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    return config
