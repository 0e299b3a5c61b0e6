"""Real mosquitto brokers on loopback for tests, and a subscriber that collects what they deliver.

`broker` is function-scoped: each test gets its own mosquitto on a free 127.0.0.1 port with its own config, log and
(optional) persistence in tmp_path. `broker.stop()` / `broker.start()` restart the SAME broker on the SAME port, which
is what an outage looks like to a sensor. `make_broker(**options)` builds more (TLS, passwords) for one test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it; mosquitto binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    """One mosquitto process on 127.0.0.1:port, restartable on the same port with the same config."""

    workdir: Path
    port: int
    persistence: bool = False
    extra_config: str = ""  # appended to the listener block, e.g. TLS or password_file lines
    host: str = "127.0.0.1"
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> None:
        lines = [
            "user root",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true" if "password_file" not in self.extra_config else "allow_anonymous false",
            self.extra_config,
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        self.config_path.write_text("\n".join(line for line in lines if line) + "\n")

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self.write_config()
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {err}\n{self.log_tail()}")
            if port_open(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {START_TIMEOUT_S} s\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM and wait: mosquitto saves persistence and closes every client connection."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no mosquitto log)"


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    qos: int
    dup: bool = False  # set by the broker when it re-delivers to a persistent session (QoS 1 redelivery)

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client that records every message on its topics; every wait has a timeout."""

    def __init__(self, host: str, port: int, topics: list[str], client_id: str | None = None, clean: bool = True):
        self.host, self.port, self.topics = host, port, topics
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", clean_session=clean, protocol=mqtt.MQTTv311
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, bool(msg.dup)))
            self._cond.notify_all()

    def start(self, timeout: float = 10.0) -> Subscriber:
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"subscriber not subscribed to {self.topics} within {timeout} s")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, topic: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, predicate: Callable[[list[Message]], bool], timeout: float) -> bool:
        """Wait until predicate(all messages so far) is true; False on timeout (the caller asserts and explains)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.2))
            return True

    def wait_count(self, topic: str, n: int, timeout: float) -> list[Message]:
        self.wait_for(lambda ms: sum(m.topic == topic for m in ms) >= n, timeout)
        return self.on(topic)

    def wait_payload(self, topic: str, payload: bytes, timeout: float) -> bool:
        return self.wait_for(lambda ms: any(m.topic == topic and m.payload == payload for m in ms), timeout)

    def settle(self, probe_topic: str, timeout: float) -> bool:
        """Publish a marker on `probe_topic` (inside this subscription) and wait for it to come back: the broker
        sends a subscription's retained messages before anything published after it, so once the marker is here,
        every retained message there was is too. The marker is removed from `messages`."""
        marker = f"settle-{uuid.uuid4()}".encode()
        self.client.publish(probe_topic, marker, qos=1)
        arrived = self.wait_payload(probe_topic, marker, timeout)
        with self._cond:
            self.messages = [m for m in self.messages if m.payload != marker]
        return arrived


def _require_mosquitto() -> None:
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto not installed (apt-get install mosquitto mosquitto-clients)")
    if os.geteuid() != 0:
        pytest.skip("broker fixture writes 'user root' and expects to run as root (as in CI)")


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Factory for extra brokers in one test (TLS, passwords); all are stopped at teardown."""
    _require_mosquitto()
    made: list[Broker] = []

    def make(persistence: bool = False, extra_config: str = "", start: bool = True) -> Broker:
        workdir = tmp_path / f"broker{len(made)}"
        workdir.mkdir()
        broker = Broker(workdir=workdir, port=free_port(), persistence=persistence, extra_config=extra_config)
        made.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    """A plain anonymous mosquitto with persistence (so a restart keeps a durable subscriber's session)."""
    return make_broker(persistence=True)


@pytest.fixture
def subscriber_factory() -> Iterator[Callable[..., Subscriber]]:
    made: list[Subscriber] = []

    def make(broker: Broker, topics: list[str], **kwargs: Any) -> Subscriber:
        sub = Subscriber(broker.host, broker.port, topics, **kwargs).start()
        made.append(sub)
        return sub

    yield make
    for sub in made:
        sub.stop()


@pytest.fixture
def password_broker(make_broker, tmp_path):
    """A broker that lets in only user `sensor` with password `right-password`."""
    passwd = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "sensor", "right-password"], check=True, timeout=10)
    return make_broker(extra_config=f"password_file {passwd}")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated second CA."""
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30, cwd=d)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")  # EC: keygen in ms, not seconds
    for ca in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-days", "2", "-subj", f"/CN={ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    run("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.crt")  # fmt: skip
    return {name: d / name for name in ("ca.crt", "other-ca.crt", "server.crt", "server.key")}


@pytest.fixture
def tls_broker(make_broker, certs):
    """A broker that speaks only TLS, with `certs`' server certificate."""
    return make_broker(extra_config=f"certfile {certs['server.crt']}\nkeyfile {certs['server.key']}")
