"""The publisher against a real mosquitto: delivery, availability, outages, crashes, auth and TLS faults."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from custom.daemon.config import MqttConfig, TlsConfig
from custom.daemon.publish.publisher import Publisher, TokenBucket
from custom.daemon.publish.spool import Spool
from custom.wire.settings import ConfigError
from custom.wire.topics import Topics

SENSOR = "s1"
TOPICS = Topics("custom", SENSOR)
EVENTS = f"custom/{SENSOR}/events"
STATUS = f"custom/{SENSOR}/status"
HEALTH = f"custom/{SENSOR}/health"
WAIT_S = 10.0

# A publisher in its own process, so the test can kill -9 it: the only honest way to make its socket die unclean.
# argv: host port spool_path connect(0/1) n_events ; prints "ready" once connected (if asked) and events are spooled.
CHILD = """
import sys, time, uuid
from custom.daemon.config import MqttConfig
from custom.daemon.publish.publisher import Publisher, TokenBucket
from custom.daemon.publish.spool import Spool
from custom.wire.topics import Topics
host, port, spool_path, connect, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
spool = Spool(spool_path, max_rows=10000, max_bytes=10**8)
config = MqttConfig(host=host, port=port, reconnect_min_s=0.05, reconnect_max_s=0.2, keepalive_s=5)
pub = Publisher(config, Topics("custom", "s1"), spool)
pub.start()
if connect and not pub.wait_connected(10):
    sys.exit("child: not connected")
ids = [str(uuid.uuid4()) for _ in range(n)]
for i, event_id in enumerate(ids):
    pub.deliver("custom/s1/events", {"event_id": event_id, "n": i})
print("ready " + " ".join(ids), flush=True)
time.sleep(120)
"""


def mqtt_config(broker, **overrides) -> MqttConfig:
    """Fast retries so outages in tests last a fraction of a second."""
    options = dict(host=broker.host, port=broker.port, reconnect_min_s=0.05, reconnect_max_s=0.3, keepalive_s=5)
    options.update(overrides)
    return MqttConfig(**options)


def make_event(n: int) -> dict:
    return {"event_id": str(uuid.uuid4()), "n": n}


def event_ids(messages) -> list[str]:
    return [m.json()["event_id"] for m in messages]


def first_arrivals(ids: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in ids:
        seen.setdefault(i, None)
    return list(seen)


@pytest.fixture
def spool(tmp_path: Path):
    with Spool(tmp_path / "spool.sqlite", max_rows=10_000, max_bytes=10**8) as s:
        yield s


@pytest.fixture
def publishers():
    """Publishers made by a test are stopped even when the test fails."""
    made: list[Publisher] = []

    def make(*args, **kwargs) -> Publisher:
        pub = Publisher(*args, **kwargs)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.stop(timeout=2.0)


def start_child(broker, spool_path: Path, connect: bool, n: int) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, broker.host, str(broker.port), str(spool_path), "1" if connect else "0", str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = _readline(proc, WAIT_S)
    except TimeoutError:
        proc.kill()
        raise
    assert line.startswith("ready"), f"child said {line!r}; stderr: {proc.stderr.read() if proc.poll() else ''}"
    return proc, line.split()[1:]


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"child printed nothing within {timeout} s")
    return proc.stdout.readline().strip()


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(WAIT_S)
    proc.stdout.close()
    proc.stderr.close()


# ------------------------------------------------------------------------------------------------------- delivery


def test_events_arrive_in_order_with_qos1_not_retained(broker, subscriber_factory, spool, publishers):
    sub = subscriber_factory(broker, [f"custom/{SENSOR}/#"])
    pub = publishers(mqtt_config(broker), TOPICS, spool)
    pub.start()
    assert pub.wait_connected(WAIT_S), pub.stats()
    sent = [make_event(i) for i in range(5)]
    for event in sent:
        pub.deliver(EVENTS, event)
    got = sub.wait_count(EVENTS, 5, WAIT_S)
    assert [m.json() for m in got] == sent
    assert all(m.qos == 1 and not m.retain for m in got)
    assert pub.wait_drained(WAIT_S), "rows must leave the spool once acknowledged"
    stats = pub.stats()
    assert stats["acked"] == 5 and stats["backlog"] == 0 and stats["connected"]


def test_online_is_retained_and_health_is_published(broker, subscriber_factory, spool, publishers):
    pub = publishers(mqtt_config(broker), TOPICS, spool)
    pub.start()
    assert pub.wait_connected(WAIT_S)
    # A subscriber that arrives later still learns the sensor is online: the status is retained.
    late = subscriber_factory(broker, [STATUS, HEALTH])
    assert late.wait_payload(STATUS, b"online", WAIT_S)
    assert late.on(STATUS)[0].retain
    assert pub.send_if_connected(HEALTH, b'{"uptime_s":1.5}')
    got = late.wait_count(HEALTH, 1, WAIT_S)
    assert got and got[0].json() == {"uptime_s": 1.5} and not got[0].retain


def test_send_if_connected_sends_retained_misc_messages_and_drops_while_offline(
    broker, subscriber_factory, spool, publishers
):
    """The hook Home Assistant discovery uses: any topic, retained, not spooled; dropped (False) while offline."""
    pub = publishers(mqtt_config(broker), TOPICS, spool)
    assert not pub.send_if_connected("homeassistant/sensor/x/config", "{}", qos=1, retain=True), "not connected yet"
    pub.start()
    assert pub.wait_connected(WAIT_S)
    assert pub.send_if_connected("homeassistant/sensor/x/config", '{"a":1}', qos=1, retain=True)
    sub = subscriber_factory(broker, ["homeassistant/#"])
    assert sub.wait_payload("homeassistant/sensor/x/config", b'{"a":1}', WAIT_S)
    assert spool.depth() == 0


def test_clean_stop_publishes_retained_offline(broker, subscriber_factory, spool, publishers):
    sub = subscriber_factory(broker, [STATUS])
    pub = publishers(mqtt_config(broker), TOPICS, spool)
    pub.start()
    assert sub.wait_payload(STATUS, b"online", WAIT_S)
    pub.stop(timeout=5.0)
    assert sub.wait_payload(STATUS, b"offline", WAIT_S)
    late = subscriber_factory(broker, [STATUS])
    assert late.wait_count(STATUS, 1, WAIT_S)[-1].payload == b"offline"
    assert not pub.connected


def test_last_will_offline_when_process_is_killed(broker, subscriber_factory, tmp_path):
    sub = subscriber_factory(broker, [STATUS])
    proc, _ = start_child(broker, tmp_path / "child.sqlite", connect=True, n=0)
    try:
        assert sub.wait_payload(STATUS, b"online", WAIT_S)
    finally:
        kill9(proc)
    # No DISCONNECT was sent: only the broker's last will can have set this.
    assert sub.wait_for(lambda ms: [m.payload for m in ms if m.topic == STATUS][-1:] == [b"offline"], WAIT_S)


# -------------------------------------------------------------------------------------------------------- outages


def test_broker_outage_loses_nothing_and_keeps_order(broker, subscriber_factory, spool, publishers):
    # A durable subscriber (fixed id, clean_session False) on a persistent broker keeps its queue across the restart.
    sub = subscriber_factory(broker, [EVENTS], client_id="durable-sub", clean=False)
    pub = publishers(mqtt_config(broker), TOPICS, spool, drain_per_s=200.0)
    pub.start()
    assert pub.wait_connected(WAIT_S)
    sent = [make_event(i) for i in range(30)]
    for event in sent[:5]:
        pub.deliver(EVENTS, event)
    assert pub.wait_drained(WAIT_S)

    broker.stop()
    deadline = time.monotonic() + WAIT_S
    while pub.connected and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not pub.connected, "publisher must notice the broker is gone"
    for event in sent[5:]:
        pub.deliver(EVENTS, event)
    assert spool.depth() == 25, "while the broker is down every event waits in the spool"
    assert pub.stats()["last_error"], "health must say why nothing is sent"

    broker.start()
    assert pub.wait_drained(WAIT_S), pub.stats()
    assert sub.wait_for(lambda ms: len({m.json()["event_id"] for m in ms}) >= 30, WAIT_S)
    got = sub.on(EVENTS)
    assert first_arrivals(event_ids(got)) == [e["event_id"] for e in sent], "every event, in the order heard"
    # Duplicates are allowed only as QoS 1 makes them: the broker re-delivering to the durable subscriber (DUP flag)
    # or the publisher re-sending a row whose PUBACK the outage swallowed (counted in stats).
    fresh = [m.json()["event_id"] for m in got if not m.dup]
    assert len(fresh) - len(set(fresh)) <= pub.stats()["resent"], "publisher duplicates must be counted"


def test_rows_without_puback_stay_spooled_and_are_resent(broker, subscriber_factory, spool, publishers):
    """A frozen broker (SIGSTOP) takes our bytes but never acknowledges: nothing may leave the spool on send alone."""
    sub = subscriber_factory(broker, [EVENTS])
    # keepalive 1 s (below what config.yaml allows) so the client gives up on the frozen broker within ~2 s
    pub = publishers(mqtt_config(broker, keepalive_s=1), TOPICS, spool, drain_per_s=200.0)
    pub.start()
    assert pub.wait_connected(WAIT_S)
    sent = [make_event(i) for i in range(5)]
    broker.process.send_signal(signal.SIGSTOP)
    try:
        for event in sent:
            pub.deliver(EVENTS, event)
        deadline = time.monotonic() + WAIT_S
        while (pub.stats()["published"] < 5 or pub.connected) and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = pub.stats()
        assert stats["published"] == 5 and not stats["connected"], stats
        assert stats["acked"] == 0 and spool.depth() == 5, "sent is not delivered: rows wait for PUBACK"
    finally:
        broker.process.send_signal(signal.SIGCONT)
    assert pub.wait_drained(WAIT_S), pub.stats()
    assert sub.wait_for(lambda ms: len({m.json()["event_id"] for m in ms}) >= 5, WAIT_S)
    got = sub.on(EVENTS)
    assert first_arrivals(event_ids(got)) == [e["event_id"] for e in sent]
    assert pub.stats()["resent"] == 5, "every unacknowledged row is re-sent after the reconnect, and counted"
    fresh = [m.json()["event_id"] for m in got if not m.dup]
    assert len(fresh) - len(set(fresh)) <= pub.stats()["resent"]


def test_backlog_survives_kill9_during_outage(make_broker, subscriber_factory, tmp_path, publishers):
    broker = make_broker(persistence=True, start=False)  # the broker is down from the start
    spool_path = tmp_path / "spool.sqlite"
    proc, sent_ids = start_child(broker, spool_path, connect=False, n=20)
    kill9(proc)

    broker.start()
    sub = subscriber_factory(broker, [EVENTS])
    with Spool(spool_path, max_rows=10_000, max_bytes=10**8) as spool:
        assert spool.depth() == 20, "kill -9 must not lose committed rows"
        pub = publishers(mqtt_config(broker), TOPICS, spool, drain_per_s=200.0)
        pub.start()
        assert pub.wait_drained(WAIT_S), pub.stats()
        assert sub.wait_for(lambda ms: len({m.json()["event_id"] for m in ms}) >= 20, WAIT_S)
        assert first_arrivals(event_ids(sub.on(EVENTS))) == sent_ids
        pub.stop(timeout=2.0)


def test_new_events_wait_behind_the_backlog(broker, subscriber_factory, tmp_path, publishers):
    """Strict spool order: a backlog left by an earlier run goes out before anything new."""
    spool_path = tmp_path / "spool.sqlite"
    with Spool(spool_path, max_rows=100, max_bytes=10**6) as spool:
        old = [make_event(i) for i in range(10)]
        for event in old:
            spool.put(EVENTS, json.dumps(event).encode())
    sub = subscriber_factory(broker, [EVENTS])
    with Spool(spool_path, max_rows=100, max_bytes=10**6) as spool:
        pub = publishers(mqtt_config(broker, max_inflight=2), TOPICS, spool, drain_per_s=50.0)
        new = make_event(99)
        pub.deliver(EVENTS, new)
        pub.start()
        assert pub.wait_drained(WAIT_S)
        got = sub.wait_count(EVENTS, 11, WAIT_S)
        assert [m.json()["n"] for m in got] == list(range(10)) + [99]
        pub.stop(timeout=2.0)


def test_publisher_spends_only_its_rate_budget(broker, subscriber_factory, spool, publishers):
    """At 0.001 events/s after a burst of max_inflight=2, a third send would take 1000 s: exactly 2 go out."""
    sub = subscriber_factory(broker, [EVENTS])
    for i in range(5):
        spool.put(EVENTS, json.dumps(make_event(i)).encode())
    pub = publishers(mqtt_config(broker, max_inflight=2), TOPICS, spool, drain_per_s=0.001)
    pub.start()
    assert len(sub.wait_count(EVENTS, 2, WAIT_S)) == 2
    deadline = time.monotonic() + WAIT_S
    while pub.stats()["acked"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = pub.stats()
    assert stats["acked"] == 2 and stats["published"] == 2 and stats["backlog"] == 3, stats


def test_token_bucket_limits_the_drain_rate():
    now = [0.0]
    bucket = TokenBucket(rate_per_s=2.0, capacity=3, clock=lambda: now[0])
    assert bucket.available() == 3, "a burst up to capacity goes at once"
    bucket.take(3)
    assert bucket.available() == 0
    now[0] += 0.49
    assert bucket.available() == 0
    now[0] += 0.02
    assert bucket.available() == 1, "then rate_per_s"
    now[0] += 100.0
    assert bucket.available() == 3, "idle time does not build a bigger burst than capacity"


# ---------------------------------------------------------------------------------------------- security faults


def _wait_attempts(pub: Publisher, n: int, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while pub.stats()["attempts"] < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pub.stats()["attempts"] >= n, pub.stats()


def _warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "custom.daemon.publish.publisher" and r.levelno >= logging.WARNING
    ]


def test_wrong_password_logs_once_and_keeps_retrying(password_broker, spool, publishers, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="custom.daemon.publish.publisher")
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-it\n")
    pub = publishers(
        mqtt_config(password_broker, username="sensor", password_file=wrong, reconnect_max_s=0.1), TOPICS, spool
    )
    pub.start()
    _wait_attempts(pub, 4)
    assert not pub.connected
    refusals = [w for w in _warnings(caplog) if "refused" in w]
    assert len(refusals) == 1, _warnings(caplog)
    assert "password" in refusals[0] or "authori" in refusals[0].lower()
    assert "mqtt.password_file" in refusals[0]


def test_right_password_from_file_connects(password_broker, subscriber_factory, spool, publishers, tmp_path):
    right = tmp_path / "right.pw"
    right.write_text("right-password\n")
    pub = publishers(mqtt_config(password_broker, username="sensor", password_file=right), TOPICS, spool)
    pub.start()
    assert pub.wait_connected(WAIT_S), pub.stats()


def test_unreadable_password_file_is_a_config_error(broker, spool, tmp_path):
    empty = tmp_path / "empty.pw"
    empty.write_text("")
    with pytest.raises(ConfigError, match=r"^mqtt\.password_file: "):
        Publisher(mqtt_config(broker, username="sensor", password_file=empty), TOPICS, spool)


def test_tls_with_right_ca_delivers(tls_broker, subscriber_factory, spool, publishers, certs, make_broker):
    pub = publishers(mqtt_config(tls_broker, tls=TlsConfig(enabled=True, ca=certs["ca.crt"])), TOPICS, spool)
    pub.start()
    assert pub.wait_connected(WAIT_S), pub.stats()
    pub.deliver(EVENTS, make_event(0))
    assert pub.wait_drained(WAIT_S)


def test_tls_with_wrong_ca_is_named_and_retried(tls_broker, spool, publishers, certs, caplog):
    caplog.set_level(logging.DEBUG, logger="custom.daemon.publish.publisher")
    config = mqtt_config(tls_broker, tls=TlsConfig(enabled=True, ca=certs["other-ca.crt"]), reconnect_max_s=0.1)
    pub = publishers(config, TOPICS, spool)
    pub.start()
    _wait_attempts(pub, 3)
    assert not pub.connected
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "TLS certificate check failed" in warnings[0], warnings


def test_plain_client_on_tls_port_is_named(tls_broker, spool, publishers, caplog):
    caplog.set_level(logging.DEBUG, logger="custom.daemon.publish.publisher")
    pub = publishers(mqtt_config(tls_broker, reconnect_max_s=0.1), TOPICS, spool)
    pub.start()
    _wait_attempts(pub, 3)
    assert not pub.connected
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "TLS" in warnings[0], warnings


def test_tls_client_on_plain_port_is_named(broker, spool, publishers, certs, caplog):
    caplog.set_level(logging.DEBUG, logger="custom.daemon.publish.publisher")
    config = mqtt_config(broker, tls=TlsConfig(enabled=True, ca=certs["ca.crt"]), reconnect_max_s=0.1)
    pub = publishers(config, TOPICS, spool)
    pub.start()
    _wait_attempts(pub, 3)
    assert not pub.connected
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "TLS handshake failed" in warnings[0], warnings
