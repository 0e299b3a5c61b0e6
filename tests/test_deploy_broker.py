"""The example broker (deploy/mosquitto/) as a real mosquitto on loopback: TLS, passwords and the topic ACL.

The broker config is derived from the shipped example by swapping only the listener and file paths, so a change to
the example that weakens it (anonymous access, no TLS, no ACL) fails here. Credentials come from the shipped
make-sensor-credentials.sh, certificates from openssl (fixtures in testing.secure_broker).
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from testing.secure_broker import EXAMPLE, WAIT_S, SecureBroker, make_ca

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto") and shutil.which("mosquitto_passwd") and shutil.which("openssl")),
    reason="needs mosquitto, mosquitto_passwd (apt: mosquitto) and openssl",
)


def test_sensor_with_right_credentials_publishes_its_own_topics(clients, secure_broker: SecureBroker) -> None:
    reader = clients("reader")
    assert not reader.connect().is_failure
    reader.subscribe("custom/#")
    sensor = clients("sensor-a")
    assert not sensor.connect().is_failure
    assert not sensor.publish("custom/sensor-a/events", '{"top": {"name": "Dog"}}').is_failure
    assert not sensor.publish("custom/sensor-a/status", "online", retain=True).is_failure
    got = reader.wait_messages(2)
    assert [(m.topic, m.payload) for m in got] == [
        ("custom/sensor-a/events", b'{"top": {"name": "Dog"}}'),
        ("custom/sensor-a/status", b"online"),
    ]
    sensor.publish("custom/sensor-a/status", "", retain=True)  # leave no retained message for the other tests


def test_wrong_password_is_refused(clients) -> None:
    code = clients("sensor-a", password="not-the-password").connect()
    assert code.is_failure
    assert code.value in (134, 135)  # Bad user name or password / Not authorized


def test_unknown_user_is_refused(clients, secure_broker: SecureBroker) -> None:
    secure_broker.passwords.setdefault("intruder", "whatever")
    assert clients("intruder").connect().is_failure


def test_wrong_ca_fails_the_tls_handshake(clients, secure_broker: SecureBroker) -> None:
    client = clients("sensor-a", ca=secure_broker.wrong_ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        client.connect()
    assert not client.connected.is_set()


def test_plain_mqtt_on_the_tls_port_gets_no_connack(secure_broker: SecureBroker) -> None:
    # A bare MQTT 3.1.1 CONNECT (client id "x", clean session): a plain-text broker would answer 0x20 (CONNACK).
    connect = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 1]) + b"x"
    with socket.create_connection(("127.0.0.1", secure_broker.port), timeout=WAIT_S) as s:
        s.sendall(connect)
        try:
            reply = s.recv(16)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith(b"\x20"), "the TLS port answered plain MQTT"


def test_sensor_cannot_publish_to_another_sensors_topics(clients) -> None:
    reader = clients("reader")
    reader.connect()
    reader.subscribe("custom/#")
    sensor = clients("sensor-a")
    sensor.connect()
    denied = sensor.publish("custom/sensor-b/events", "forged")
    assert denied.is_failure and denied.value == 135  # Not authorized
    # Same connection, so in order: once this arrives, the forged one would have arrived before it.
    assert not sensor.publish("custom/sensor-a/events", "sentinel").is_failure
    got = reader.wait_until(lambda m: m.payload == b"sentinel")
    assert ("custom/sensor-a/events", b"sentinel") in got
    assert not [t for t, _ in got if t.startswith("custom/sensor-b/")]


def test_reader_cannot_publish(clients) -> None:
    sensor = clients("sensor-a")
    sensor.connect()
    sensor.subscribe("custom/sensor-a/#")
    reader = clients("reader")
    reader.connect()
    denied = reader.publish("custom/sensor-a/events", "forged")
    assert denied.is_failure and denied.value == 135
    assert not sensor.publish("custom/sensor-a/health", "sentinel").is_failure
    got = sensor.wait_until(lambda m: m.payload == b"sentinel")
    assert not [p for _, p in got if p == b"forged"]


def test_credentials_script_makes_a_client_certificate_signed_by_the_ca(tmp_path: Path) -> None:
    ca_key, ca_cert = make_ca(tmp_path, "ca")
    result = subprocess.run(
        [str(EXAMPLE / "make-sensor-credentials.sh"), "sensor-c", "--passwd", str(tmp_path / "passwd"),
         "--out", str(tmp_path / "out"), "--ca-cert", str(ca_cert), "--ca-key", str(ca_key)],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    cert = tmp_path / "out" / "sensor-c.crt"
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_cert), "-purpose", "sslclient", str(cert)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-subject"], capture_output=True, text=True, timeout=30
    ).stdout
    assert "CN = sensor-c" in subject
    assert "cert: /etc/custom-sensor/sensor-c.crt" in result.stdout
    assert (tmp_path / "passwd").read_text().startswith("sensor-c:")


def test_credentials_script_rejects_a_sensor_id_that_would_widen_the_acl(tmp_path: Path) -> None:
    for bad in ("a/b", "a+", "#", "", "_alerts"):
        result = subprocess.run(
            [str(EXAMPLE / "make-sensor-credentials.sh"), bad, "--passwd", str(tmp_path / "passwd")],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode != 0, bad
    assert not (tmp_path / "passwd").exists()
