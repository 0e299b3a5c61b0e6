"""The systemd tier: deploy/install.sh into a booted Debian 12 container (real systemd, journald, sd_notify,
watchdog), then the operator's view of the sensor with `systemctl` and `journalctl` only.

The container comes from testing/nspawn.py (systemd-nspawn + nsenter; the host's PID 1 need not be systemd). It
shares the host's network, so the broker runs on host loopback. Its microphone is a PulseAudio null sink inside the
container (vmic.service) that the hardened unit reaches through a drop-in setting PULSE_SERVER; a looping player
unit plays a real clip from ../shared into it.

The scenarios share one container and one installed sensor and run in file order; each leaves the service running
with the base config (the `fresh_service` fixture makes sure of it). Run only this tier: `pytest -m systemd`.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing import nspawn
from testing.broker import Broker, Message, Subscriber, free_port
from testing.shared import ROOT

pytestmark = pytest.mark.systemd

UNIT = "custom-sensor.service"
INGEST_UNIT = "custom-ingest.service"
DROPINS = Path("etc/systemd/system/custom-sensor.service.d")
CONFIG = "/etc/custom-sensor/config.yaml"
SPOOL = "/var/lib/custom-sensor/spool.sqlite"
PASSWORD = "/etc/custom-sensor/mqtt-password"
BUNDLE = "/var/lib/custom-sensor/bundle"
CLIP = "data/clips/siren/us8k_102871-8-0-8.flac"
SENSOR = "nspawn-sensor"
STATUS = f"custom/{SENSOR}/status"
EVENTS = f"custom/{SENSOR}/events"
HOP_S = 2.0
MAX_EXPOSURE = 2.0
VENV_PYTHON = "/opt/custom-sensor/venv/bin/python"
MIC_DROPIN = f"""[Service]
Environment=PULSE_SERVER=unix:{nspawn.MIC_DIR}/pulse.sock PULSE_SOURCE=vmic.monitor
"""


def require_tools() -> None:
    import os

    if os.geteuid() != 0:
        pytest.fail("the systemd tier needs root (systemd-nspawn, nsenter): run it via tests/run.sh")
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: tests/run.sh installs systemd-container and debootstrap")


def sensor_config(port: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "sensor_id": SENSOR,
        "location": {"lat": 40.4169, "lon": -3.7035, "name": "nspawn"},
        "window": {"length_s": HOP_S, "hop_s": HOP_S},
        "model": {"threads": 1},
        "mqtt": {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        "spool": {"path": SPOOL},
        "health_interval_s": 2.0,
    }
    config.update(overrides)
    return config


class Sensor:
    """The installed sensor in its container, seen through systemctl and journalctl."""

    def __init__(self, box: nspawn.Container, broker: Broker) -> None:
        self.box = box
        self.broker = broker

    def systemctl(self, *args: str, check: bool = True) -> str:
        return self.box.run("systemctl", "--no-pager", *args, check=check).stdout

    def show(self, *props: str, unit: str = UNIT) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"-p{p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, since_cursor: str | None = None, unit: str = UNIT) -> str:
        args = ["journalctl", "--no-pager", "-o", "cat", "-u", unit]
        if since_cursor:
            args += ["--after-cursor", since_cursor]
        return self.box.run(*args, check=False).stdout

    def cursor(self) -> str:
        out = self.box.run("journalctl", "-n0", "--show-cursor", "--no-pager", check=False).stdout
        match = re.search(r"-- cursor: (\S+)", out)
        return match.group(1) if match else ""

    def write_config(self, config: dict[str, Any]) -> None:
        path = self.box.root / CONFIG.lstrip("/")
        path.write_text(yaml.safe_dump(config))

    def dropin(self, name: str, text: str | None) -> None:
        path = self.box.root / DROPINS / f"{name}.conf"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.systemctl("daemon-reload")

    def wait_state(self, want: Callable[[dict[str, str]], bool], props: tuple[str, ...], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        state = self.show(*props)
        while not want(state) and time.monotonic() < deadline:
            time.sleep(0.3)
            state = self.show(*props)
        return state

    def wait_running(self, timeout: float = 120.0) -> dict[str, str]:
        props = ("ActiveState", "SubState", "MainPID", "NRestarts", "Result")
        return self.wait_state(lambda s: (s["ActiveState"], s["SubState"]) == ("active", "running"), props, timeout)

    def subscribe(self, topics: list[str], durable_id: str | None = None) -> Subscriber:
        """durable_id: a persistent session, so the broker queues what arrives while this client is away."""
        return Subscriber("127.0.0.1", self.broker.port, topics, client_id=durable_id, clean=durable_id is None).start()

    def status(self) -> str:
        return self.systemctl("status", UNIT, check=False)


def events(subscriber: Subscriber) -> list[dict[str, Any]]:
    return [m.json() for m in subscriber.on(EVENTS)]


def window_starts(evs: list[dict[str, Any]]) -> list[float]:
    from datetime import datetime

    return [datetime.fromisoformat(e["window"]["start"].replace("Z", "+00:00")).timestamp() for e in evs]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """mosquitto on host loopback: the container shares the host's network. Persistence keeps a durable
    subscriber's session across `broker.stop()`/`start()`."""
    server = Broker(tmp_path_factory.mktemp("nspawn-broker"), free_port(), persistence=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def installed(
    tmp_path_factory: pytest.TempPathFactory, shared: Path, yamnet_bundle: Path, broker: Broker
) -> Iterator[Sensor]:
    """A booted container with the sensor installed by deploy/install.sh and running on the virtual mic."""
    require_tools()
    workdir = tmp_path_factory.mktemp("nspawn")
    box = nspawn.sensor_container(workdir, ROOT, shared, f"custom-test-{broker.port}")
    try:
        shutil.copytree(yamnet_bundle, box.root / "root/bundle")
        (box.root / "root/config.yaml").write_text(yaml.safe_dump(sensor_config(broker.port)))
        (box.root / "root/mqtt-password").write_text("not-the-real-one\n")  # what make-sensor-credentials.sh writes
        (box.root / "root/mqtt-password").chmod(0o644)  # copied with a loose umask: the installer must close it
        clip_dropin = box.root / "etc/systemd/system/vmic-player.service.d/clip.conf"
        clip_dropin.parent.mkdir(parents=True)
        clip_dropin.write_text(f"[Service]\nEnvironment=CLIP=/shared/{CLIP}\n")
        # The mic drop-in goes in before install.sh starts the service: the operator's `systemctl edit`.
        sensor = Sensor(box, broker)
        (box.root / DROPINS).mkdir(parents=True)
        (box.root / DROPINS / "mic.conf").write_text(MIC_DROPIN)
        box.run("systemctl", "daemon-reload")
        box.run("systemctl", "start", "vmic-player.service")
        pip_env = {"PIP_CERT": str(nspawn.HOST_CA), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        install = box.run(
            "bash", "/src/deploy/install.sh", "--from", "/src", "--bundle", "/root/bundle",
            "--config", "/root/config.yaml", "--mqtt-password", "/root/mqtt-password", env=pip_env, check=False,
            timeout=1200,
        )  # fmt: skip
        assert install.returncode == 0, f"install.sh failed:\n{install.stdout}\n{install.stderr}"
        yield sensor
    finally:
        box.stop()
        nspawn.release(workdir)


@pytest.fixture
def sensor(installed: Sensor) -> Iterator[Sensor]:
    """The installed sensor, running with the base config and no test drop-ins when the test starts and ends."""
    yield installed
    installed.dropin("test", None)
    installed.write_config(sensor_config(installed.broker.port))
    installed.systemctl("reset-failed", UNIT, check=False)
    installed.systemctl("restart", UNIT, check=False)
    installed.wait_running()


def test_install_reaches_active_running_after_ready_and_events_arrive(sensor: Sensor) -> None:
    watch = sensor.subscribe([EVENTS, STATUS])
    state = sensor.wait_running()
    assert (state["ActiveState"], state["SubState"]) == ("active", "running"), sensor.status()
    # Type=notify: "active" is only reached through READY=1; the unit really is a notify unit as installed
    assert sensor.show("Type", "NotifyAccess")["Type"] == "notify"
    assert watch.wait_payload(STATUS, b"online", timeout=60), sensor.journal()
    assert watch.wait_for(lambda ms: sum(m.topic == EVENTS for m in ms) >= 2, timeout=90), sensor.journal()
    event = events(watch)[-1]
    assert event["sensor_id"] == SENSOR
    watch.stop()


def test_reload_applies_a_config_change_without_losing_a_window(sensor: Sensor) -> None:
    watch = sensor.subscribe([EVENTS])
    assert watch.wait_for(lambda ms: len(ms) >= 2, timeout=90), sensor.journal()
    pid = sensor.show("MainPID")["MainPID"]
    cursor = sensor.cursor()
    sensor.write_config(sensor_config(sensor.broker.port, location={"lat": 40.0, "lon": -3.0, "name": "reloaded"}))
    sensor.systemctl("reload", UNIT)
    assert watch.wait_for(
        lambda ms: sum(m.json()["location"].get("name") == "reloaded" for m in ms) >= 2, timeout=90
    ), sensor.journal(cursor)
    assert sensor.show("MainPID")["MainPID"] == pid, "reload restarted the process"
    assert "reloaded /etc/custom-sensor/config.yaml" in sensor.journal(cursor)
    starts = window_starts(events(watch))
    gaps = [round(b - a, 2) for a, b in zip(starts, starts[1:], strict=False)]
    # window starts are wall-clock stamps of the capture (jitter of a block or so); a lost window is a whole hop
    assert all(abs(gap - HOP_S) < HOP_S / 2 for gap in gaps), f"not one hop apart across the reload: {gaps}"
    watch.stop()


def test_hardening_as_installed_leaves_the_mic_and_spool_reachable(sensor: Sensor) -> None:
    hardening = sensor.show("ProtectSystem", "PrivateUsers", "DevicePolicy", "NoNewPrivileges", "User")
    assert hardening == {
        "ProtectSystem": "strict", "PrivateUsers": "yes", "DevicePolicy": "closed",
        "NoNewPrivileges": "yes", "User": "custom-sensor",
    }  # fmt: skip
    watch = sensor.subscribe([EVENTS])
    assert watch.wait_for(lambda ms: len(ms) >= 2, timeout=90), sensor.journal()
    # the looping siren, not the null sink's digital silence (which has no finite level)
    levels = [e["level"]["laeq"] for e in events(watch)]
    assert all(level is not None and level > -60 for level in levels), levels
    watch.stop()
    owner = sensor.box.run("stat", "-c", "%U %a", SPOOL).stdout.split()
    assert owner[0] == "custom-sensor", owner
    journal = sensor.journal()
    assert "Permission denied" not in journal and "Read-only file system" not in journal, journal


def test_another_local_user_cannot_read_the_password_config_spool_or_bundle(sensor: Sensor) -> None:
    """A second, unprivileged login on the Pi (not the service): the broker password, the config naming the broker
    user, the spool of unsent events and the bundle are closed to it, while the service reads and writes them."""
    box = sensor.box
    watch = sensor.subscribe([EVENTS])
    assert watch.wait_for(lambda ms: len(ms) >= 1, timeout=90), sensor.journal()  # the spool exists and is in use
    watch.stop()
    if box.run("id", "-u", "neighbour", check=False).returncode != 0:
        box.run("useradd", "--create-home", "--shell", "/bin/bash", "neighbour")
    paths = [PASSWORD, CONFIG, SPOOL, f"{BUNDLE}/manifest.json"]
    for path in paths:
        denied = box.run("runuser", "-u", "neighbour", "--", "cat", path, check=False)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (path, denied.stdout[:200])
        listed = box.run("runuser", "-u", "neighbour", "--", "ls", str(Path(path).parent), check=False)
        assert listed.returncode != 0, f"{path}'s folder can be listed by another user"
    modes = box.run("stat", "-c", "%n %U:%G %a", PASSWORD, CONFIG, SPOOL, BUNDLE).stdout.splitlines()
    assert modes == [
        f"{PASSWORD} root:custom-sensor 640", f"{CONFIG} root:custom-sensor 640",
        f"{SPOOL} custom-sensor:custom-sensor 600", f"{BUNDLE} custom-sensor:custom-sensor 750",
    ], modes  # fmt: skip
    readable = box.run("runuser", "-u", "custom-sensor", "--", "cat", PASSWORD, check=False)
    assert readable.stdout == "not-the-real-one\n", "the service user must still read its password"


def test_a_hung_pipeline_is_killed_by_the_watchdog_and_restarted_with_its_spool(sensor: Sensor) -> None:
    """Broker down, so finished windows go to the spool; the pipeline then stalls (test-only seam), the watchdog
    kills the process, systemd restarts it, and the restarted daemon finds and sends what the spool held."""
    cursor = sensor.cursor()
    # durable: the restarted daemon may flush its spool the moment the broker is back, before any new subscriber
    # could subscribe; the broker queues those for this session instead
    watch = sensor.subscribe([EVENTS], durable_id="watchdog-watch")
    sensor.broker.stop()
    broker_down_at = time.time()
    sensor.dropin(
        "test",
        # the test-only entry point is not installed with the package: it runs from the checkout bound at /src
        "[Service]\nExecStart=\nEnvironment=PYTHONPATH=/src\n"
        f"ExecStart={VENV_PYTHON} -m testing.faults sensord --fault-stall-after 3 --config {CONFIG}\n"
        "WatchdogSec=8\nRestartSec=1\n",
    )
    sensor.systemctl("restart", UNIT)
    killed = sensor.wait_state(lambda s: int(s["NRestarts"]) >= 1, ("NRestarts", "ActiveState"), timeout=120)
    journal = sensor.journal(cursor)
    assert int(killed["NRestarts"]) >= 1, journal
    assert "pipeline stalled on purpose" in journal, journal
    assert "Watchdog timeout" in journal, journal
    killed_at = time.time()
    assert sensor.wait_running()["ActiveState"] == "active"
    # the restarted daemon opened the same spool and found the stalled run's windows in it
    deadline = time.monotonic() + 60
    while "unsent event(s)" not in sensor.journal(cursor) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert re.search(rf"spool {SPOOL} holds [1-9]\d* unsent event\(s\)", sensor.journal(cursor)), sensor.journal()
    sensor.broker.start()

    def stalled_run_windows(ms: list[Message]) -> list[float]:
        # the stalled run's windows all started >= WatchdogSec before its kill was seen
        starts = window_starts([m.json() for m in ms if m.topic == EVENTS])
        return [s for s in starts if broker_down_at < s < killed_at - 8]

    assert watch.wait_for(lambda ms: len(stalled_run_windows(ms)) >= 1, timeout=90), (
        "no event from before the watchdog kill was delivered",
        window_starts(events(watch)),
        broker_down_at,
        killed_at,
        sensor.journal(cursor),
    )
    watch.stop()


def test_stop_publishes_offline(sensor: Sensor) -> None:
    sensor.wait_running()
    watch = sensor.subscribe([STATUS])
    assert watch.wait_payload(STATUS, b"online", timeout=60), sensor.journal()
    cursor = sensor.cursor()
    sensor.systemctl("stop", UNIT)
    state = sensor.show("ActiveState", "Result")
    assert state == {"ActiveState": "inactive", "Result": "success"}, sensor.journal(cursor)
    late = sensor.subscribe([STATUS])
    assert late.wait_payload(STATUS, b"offline", timeout=10)
    assert late.on(STATUS)[-1].retain
    assert "MQTT disconnected cleanly (status offline)" in sensor.journal(cursor)
    watch.stop()
    late.stop()


def test_bad_config_fails_with_78_and_no_restart_loop(sensor: Sensor) -> None:
    # RestartSec=1: a restart loop would show many times over within the wait below
    sensor.dropin("test", "[Service]\nRestartSec=1\n")
    config = sensor_config(sensor.broker.port, window={"length_s": 2.0, "hop_s": 5.0})
    sensor.write_config(config)
    cursor = sensor.cursor()
    restart = sensor.box.run("systemctl", "restart", UNIT, check=False)
    assert restart.returncode != 0, "a start that exits 78 before READY must fail the start job"
    time.sleep(5)  # five RestartSec periods
    state = sensor.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert state == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "78", "NRestarts": "0"}, (
        sensor.journal(cursor)
    )
    journal = sensor.journal(cursor)
    assert "window.hop_s" in journal, journal
    assert journal.count("window.hop_s") == 1, "one start, one line"


def test_journal_shows_the_operator_lines(sensor: Sensor) -> None:
    """What OPERATING.md tells the operator to look for, as journald recorded it over the scenarios above."""
    journal = sensor.journal()
    for line in (
        f"sensor {SENSOR} running: bundle",
        "reloaded /etc/custom-sensor/config.yaml",
        "MQTT disconnected cleanly (status offline)",
        "stopped after",
        "Watchdog timeout",
        "Main process exited, code=exited, status=78",
    ):
        assert line in journal, f"{line!r} not in the journal:\n{journal[-3000:]}"
    # operator lines go to the journal as journal records with a priority, not just as captured stderr
    warnings = sensor.box.run("journalctl", "--no-pager", "-o", "cat", "-u", UNIT, "-p", "warning").stdout
    assert "pipeline stalled on purpose" in warnings, warnings


def exposure(sensor: Sensor, unit: str) -> float:
    out = sensor.box.run("systemd-analyze", "security", "--no-pager", unit, check=False).stdout
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: ([\d.]+)", out)
    assert match, out
    print(f"systemd-analyze security {unit} (inside the container): {match.group(1)}")
    return float(match.group(1))


def test_unit_verifies_and_security_exposure_measured_inside(sensor: Sensor) -> None:
    """On the system it runs on (units, users and binaries as installed), not the --offline rating of the file."""
    verify = sensor.box.run("systemd-analyze", "verify", "--man=no", UNIT, check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    assert exposure(sensor, UNIT) <= MAX_EXPOSURE


def test_ingest_unit_verifies_and_rates_inside(sensor: Sensor) -> None:
    box = sensor.box
    shutil.copyfile(ROOT / "deploy" / INGEST_UNIT, box.root / "etc/systemd/system" / INGEST_UNIT)
    # verify checks that ExecStart exists: the sensor's venv has the same console script
    box.run("mkdir", "-p", "/opt/custom-ingest")
    box.run("ln", "-sfn", "/opt/custom-sensor/venv", "/opt/custom-ingest/venv")
    box.run("systemctl", "daemon-reload")
    verify = box.run("systemd-analyze", "verify", "--man=no", f"/etc/systemd/system/{INGEST_UNIT}", check=False)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    assert exposure(sensor, INGEST_UNIT) <= MAX_EXPOSURE


def test_ingest_unit_runs_for_real_against_postgresql(sensor: Sensor, pg_cluster: Any) -> None:
    """custom-ingest.service in the container, hardened as shipped: migrates an empty database (ExecStartPre),
    consumes the sensor's events from the broker, and stops cleanly. PostgreSQL is the test session's throwaway
    cluster on host loopback (it has PostGIS), reached over the shared network."""
    import psycopg

    from testing.postgres import create_database

    dsn = create_database(pg_cluster, f"nspawn_ingest_{sensor.broker.port}")
    box = sensor.box
    venv = box.root / "opt/custom-ingest/venv"
    if venv.is_symlink():  # the verify test's stand-in
        venv.unlink()
    box.run("python3", "-m", "venv", "/opt/custom-ingest/venv")
    pip_env = {"PIP_CERT": str(nspawn.HOST_CA)}
    box.run("/opt/custom-ingest/venv/bin/pip", "install", "-q", "/src[fleet]", env=pip_env, timeout=900)
    settings = {
        "mqtt": {"host": "127.0.0.1", "port": sensor.broker.port, "client_id": "nspawn-ingest"},
        "database": {"dsn": dsn},
        "timezone": "Europe/Madrid",
    }
    config = box.root / "etc/custom-ingest/ingest.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(settings))
    config.chmod(0o644)
    shutil.copyfile(ROOT / "deploy" / INGEST_UNIT, box.root / "etc/systemd/system" / INGEST_UNIT)
    box.run("systemctl", "daemon-reload")
    try:
        box.run("systemctl", "start", INGEST_UNIT)
        state = sensor.show("ActiveState", "SubState", "Type", unit=INGEST_UNIT)
        journal = sensor.journal(unit=INGEST_UNIT)
        assert state == {"ActiveState": "active", "SubState": "running", "Type": "exec"}, journal
        deadline = time.monotonic() + 90
        rows = 0
        while rows < 2 and time.monotonic() < deadline:
            time.sleep(1)
            with psycopg.connect(dsn) as conn:
                rows = conn.execute("SELECT count(*) FROM events WHERE sensor_id = %s", (SENSOR,)).fetchone()[0]
        assert rows >= 2, sensor.journal(unit=INGEST_UNIT)
        box.run("systemctl", "stop", INGEST_UNIT)
        stopped = sensor.show("ActiveState", "Result", unit=INGEST_UNIT)
        assert stopped == {"ActiveState": "inactive", "Result": "success"}
        journal = sensor.journal(unit=INGEST_UNIT)
        assert "applied 001" in journal and "consuming" in journal, journal
    finally:
        box.run("systemctl", "stop", INGEST_UNIT, check=False)
