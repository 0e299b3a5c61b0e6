"""The shipped example broker (deploy/mosquitto/) as a real mosquitto on loopback, for tests: TLS with a fresh CA,
per-sensor passwords from the shipped credentials script, and the shipped ACL. Fixtures `secure_broker` (one per
module) and `clients` (paho clients that record what they get)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from testing.shared import ROOT

EXAMPLE = ROOT / "deploy" / "mosquitto"
WAIT_S = 10.0


# ------------------------------------------------------------------------------------------------- certificates


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (EC keys: fast to make)."""
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout", str(key), "-out", str(cert), cwd=folder,
    )  # fmt: skip
    return key, cert


def make_server_cert(folder: Path, ca_key: Path, ca_cert: Path) -> tuple[Path, Path]:
    """A server certificate valid for 127.0.0.1 and localhost: clients check the name, not only the CA."""
    key, csr, cert, ext = (folder / f"server.{s}" for s in ("key", "csr", "crt", "ext"))
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(key), "-out", str(csr), cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
        "-extfile", str(ext), "-out", str(cert), cwd=folder,
    )  # fmt: skip
    return key, cert


# ------------------------------------------------------------------------------------------------------- broker


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_credentials(user: str, passwd_file: Path, out: Path) -> str:
    """Run the shipped script; return the password it generated (and check its config snippet names the user)."""
    result = subprocess.run(
        [str(EXAMPLE / "make-sensor-credentials.sh"), user, "--passwd", str(passwd_file), "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert f"username: {user}" in result.stdout
    return (out / f"{user}.password").read_text().strip()


def broker_config(example: str, port: int, files: dict[str, Path]) -> str:
    """The example config with only the listener and file paths swapped; each swapped key must be in the example."""
    text = example
    text, n = re.subn(r"(?m)^listener 8883$", f"listener {port} 127.0.0.1", text)
    assert n == 1, "the example must have exactly one TLS listener on 8883"
    for key, path in files.items():
        text, n = re.subn(rf"(?m)^{key} .*$", f"{key} {path}", text)
        assert n == 1, f"the example config must set {key}"
    assert re.search(r"(?m)^allow_anonymous false$", text), "the example must refuse anonymous clients"
    # Test-only additions: tests run as root, and keep no state.
    return text + "\nuser root\npersistence false\nlog_dest stderr\n"


@dataclass
class SecureBroker:
    """A mosquitto running the example config on a loopback port, with what clients need to reach it."""

    port: int
    ca_cert: Path
    wrong_ca_cert: Path
    passwords: dict[str, str]
    folder: Path
    process: subprocess.Popen[bytes] = field(repr=False)


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"mosquitto did not listen on 127.0.0.1:{port} within {WAIT_S} s")


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    folder = tmp_path_factory.mktemp("broker")
    ca_key, ca_cert = make_ca(folder, "ca")
    _, wrong_ca_cert = make_ca(folder, "rogue-ca")
    server_key, server_cert = make_server_cert(folder, ca_key, ca_cert)
    passwd = folder / "passwd"
    users = ("sensor-a", "sensor-b", "reader", "homeassistant", "ingest")
    passwords = {u: make_credentials(u, passwd, folder / "creds") for u in users}
    acl = folder / "acl"
    shutil.copyfile(EXAMPLE / "acl", acl)
    port = free_port()
    files = {
        "password_file": passwd,
        "acl_file": acl,
        "cafile": ca_cert,
        "certfile": server_cert,
        "keyfile": server_key,
    }
    conf = folder / "mosquitto.conf"
    conf.write_text(broker_config((EXAMPLE / "mosquitto.conf").read_text(), port, files))
    process = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port, process)
        yield SecureBroker(port, ca_cert, wrong_ca_cert, passwords, folder, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT_S)


# ------------------------------------------------------------------------------------------------------ clients


class Client:
    """A paho 2.x MQTT v5 client whose callbacks feed events a test can wait on, each with a timeout."""

    def __init__(
        self,
        broker: SecureBroker,
        user: str,
        password: str | None = None,
        ca: Path | None = None,
        client_id: str | None = None,
    ) -> None:
        self.connected = threading.Event()
        self.connack: ReasonCode | None = None
        self.messages: list[mqtt.MQTTMessage] = []
        self.got_message = threading.Condition()
        self.pubacks: dict[int, ReasonCode] = {}
        self.puback_done = threading.Condition()
        self.subscribed = threading.Event()
        self.mqtt = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{user}", protocol=mqtt.MQTTv5
        )
        self.mqtt.username_pw_set(user, broker.passwords[user] if password is None else password)
        self.mqtt.tls_set(ca_certs=str(ca or broker.ca_cert))
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_message = self._on_message
        self.mqtt.on_publish = self._on_publish
        self.mqtt.on_subscribe = lambda *args: self.subscribed.set()
        self.broker = broker

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.connack = reason_code
        self.connected.set()

    def _on_message(self, client, userdata, message) -> None:  # noqa: ANN001
        with self.got_message:
            self.messages.append(message)
            self.got_message.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ANN001
        with self.puback_done:
            self.pubacks[mid] = reason_code
            self.puback_done.notify_all()

    def connect(self) -> ReasonCode:
        """Connect (TLS handshake happens here and raises on a bad certificate) and return the CONNACK code."""
        self.mqtt.connect("127.0.0.1", self.broker.port, keepalive=30)
        self.mqtt.loop_start()
        assert self.connected.wait(WAIT_S), "no CONNACK"
        assert self.connack is not None
        return self.connack

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.mqtt.subscribe(topic, qos=1)
        assert self.subscribed.wait(WAIT_S), "no SUBACK"

    def publish(self, topic: str, payload: str, retain: bool = False) -> ReasonCode:
        """Publish QoS 1 and return the broker's PUBACK reason code (MQTT v5 reports ACL refusals there)."""
        info = self.mqtt.publish(topic, payload, qos=1, retain=retain)
        with self.puback_done:
            assert self.puback_done.wait_for(lambda: info.mid in self.pubacks, WAIT_S), f"no PUBACK for {topic}"
            return self.pubacks[info.mid]

    def wait_messages(self, count: int) -> list[mqtt.MQTTMessage]:
        with self.got_message:
            assert self.got_message.wait_for(lambda: len(self.messages) >= count, WAIT_S), (
                f"expected {count} messages, got {[m.topic for m in self.messages]}"
            )
            return list(self.messages)

    def wait_until(self, last: Callable[[mqtt.MQTTMessage], bool]) -> list[tuple[str, bytes]]:
        """(topic, payload) of every message received up to the first one matching `last`."""
        with self.got_message:
            assert self.got_message.wait_for(lambda: any(last(m) for m in self.messages), WAIT_S), (
                f"the awaited message did not come; got {[m.topic for m in self.messages]}"
            )
            return [(m.topic, m.payload) for m in self.messages]

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


@pytest.fixture
def clients(secure_broker: SecureBroker) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(user: str, password: str | None = None, ca: Path | None = None, client_id: str | None = None) -> Client:
        client = Client(secure_broker, user, password, ca, client_id)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# -------------------------------------------------------------------------------------------------------- tests
