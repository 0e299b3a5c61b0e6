"""A sensor speaks only for itself, through the real parts: the shipped broker config (TLS, per-sensor passwords from
make-sensor-credentials.sh, the shipped ACL) in a real mosquitto, `custom-ingest run` logged in as the ACL's `ingest`
user, a real PostgreSQL. The broker refuses sensor A's client below sensor B's topic; the ingest refuses A's payload
in B's name on A's own topic, keeps it only in `rejected` and counts it in its health."""

from __future__ import annotations

import json
import shutil

import psycopg
import pytest

from custom.daemon.publish.event import EventContext
from testing.ingest import build_event, hour_in_parts, wait_rows
from testing.secure_broker import SecureBroker

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto") and shutil.which("mosquitto_passwd") and shutil.which("openssl")),
    reason="needs mosquitto, mosquitto_passwd (apt: mosquitto) and openssl",
)
T0 = 1764500400.0  # 2025-11-30T11:00:00Z


def _context(sensor_id: str) -> EventContext:
    return EventContext(sensor_id, {"lat": 40.42, "lon": -3.70}, ("Siren", "Dog"), (0.5, 0.5), "b", "0" * 64, "dB(A)")


def _ingest_config(secure_broker: SecureBroker, tmp_path) -> str:
    password = tmp_path / "ingest.password"
    password.write_text(secure_broker.passwords["ingest"] + "\n")
    config = tmp_path / "ingest.yaml"
    config.write_text(
        f"mqtt: {{username: ingest, password_file: {password}, tls_ca: {secure_broker.ca_cert}}}\n"
        "health_interval_s: 0.5\n"
    )
    return str(config)


def test_a_sensor_cannot_speak_for_another(secure_broker, clients, ingest_db, make_ingest, tmp_path):
    ingest = make_ingest(ingest_db, secure_broker.port).start("--config", _ingest_config(secure_broker, tmp_path))
    ingest.wait_subscribed()
    reader = clients("reader")
    reader.connect()
    reader.subscribe("custom/_ingest/+/health")
    sensor_a = clients("sensor-a")
    sensor_a.connect()
    as_b = build_event(_context("sensor-b"), [0.9, 0.1], T0, 70.0)
    b_summary, _ = hour_in_parts(_context("sensor-b"), T0 + 1200, T0 + 3600, 70.0, ["Siren"])

    refused = sensor_a.publish("custom/sensor-b/events", json.dumps(as_b))
    assert refused.is_failure and refused.value == 135, "the broker let sensor A write below sensor B's topic"
    for topic, payload in (("custom/sensor-a/events", as_b), ("custom/sensor-a/summary", b_summary)):
        assert not sensor_a.publish(topic, json.dumps(payload)).is_failure  # A's own topic: the broker takes it
    own = build_event(_context("sensor-a"), [0.1, 0.9], T0 + 10, 55.0)
    assert not sensor_a.publish("custom/sensor-a/events", json.dumps(own)).is_failure

    assert wait_rows(ingest_db, "SELECT count(*) FROM events", lambda n: n >= 1, timeout=20) == 1, ingest.log()
    assert wait_rows(ingest_db, "SELECT count(*) FROM rejected", lambda n: n >= 2, timeout=20) == 2, ingest.log()
    with psycopg.connect(ingest_db) as conn:
        events = conn.execute("SELECT event_id::text, sensor_id FROM events").fetchall()
        sensors = [r[0] for r in conn.execute("SELECT id FROM sensors ORDER BY id")]
        rolled = conn.execute("SELECT DISTINCT sensor_id FROM hourly_sensor").fetchall()
        summaries = conn.execute("SELECT count(*) FROM summaries").fetchone()[0]
        rejected = conn.execute("SELECT topic, reason FROM rejected ORDER BY topic").fetchall()
    assert events == [(own["event_id"], "sensor-a")], "only A's own event is stored"
    assert sensors == ["sensor-a"] and rolled == [("sensor-a",)], "B appears nowhere: not on the map, not rolled up"
    assert summaries == 0
    assert rejected == [
        ("custom/sensor-a/events", "sensor_id: payload names 'sensor-b' but its topic is sensor 'sensor-a''s"),
        ("custom/sensor-a/summary", "sensor_id: payload names 'sensor-b' but its topic is sensor 'sensor-a''s"),
    ]
    reader.wait_until(lambda m: json.loads(m.payload).get("wrong_sensor") == 2)  # counted in the ingest's health
    assert "payload names 'sensor-b'" in ingest.log()  # and logged
    assert ingest.stop() == 0, ingest.log()
