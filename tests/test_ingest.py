"""The fleet ingest with real parts: mosquitto on loopback, a throwaway PostgreSQL + PostGIS, `custom-ingest run` as
a subprocess (so it can be killed -9), events built by the daemon's own event code from real YAMNet scores."""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest

from bench.fleet import ScoreTable, publish_fleet, score_table
from custom.daemon.publish.event import EventContext
from custom.ingest.cli import main as ingest_cli
from testing.ingest import build_event, hour_in_parts, wait_rows

CLIPS = ["siren/us8k_102871-8-0-8.flac", "dog", "horn", "jackhammer", "children"]
QUEUE_ALL = "max_queued_messages 1000000"  # keep the whole backlog; 0 ("no limit") is buggy in mosquitto 2.0


@pytest.fixture(scope="module")
def scores(yamnet_bundle: Path, shared: Path) -> ScoreTable:
    """Real per-window YAMNet outputs on real clips: what the simulated sensors 'hear'."""
    clips = []
    for name in CLIPS:
        path = shared / "data/clips" / name
        clips.extend(sorted(path.glob("*.flac"))[:2] if path.is_dir() else [path])
    return score_table(yamnet_bundle, clips)


def _count(dsn: str, sql: str = "SELECT count(*) FROM events", args: tuple | None = None) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchone()[0]


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _fleet_in_background(port: int, table: ScoreTable, sensors: int, windows: int, period: float, result: dict):
    def run() -> None:
        result["sent"] = publish_fleet("127.0.0.1", port, table, range(sensors), windows, period, time.time() - 7200)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _assert_exactly_once(dsn: str, sent: dict[str, float]) -> None:
    with psycopg.connect(dsn) as conn:
        ids = [row[0] for row in conn.execute("SELECT event_id::text FROM events")]
        rolled = conn.execute("SELECT coalesce(sum(events), 0) FROM hourly_sensor").fetchone()[0]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicated rows"
    missing = set(sent) - set(ids)
    assert not missing, f"{len(missing)} of {len(sent)} events lost"
    assert rolled == len(ids), f"hourly rollup counts {rolled} events, table has {len(ids)}"


def test_bad_input_duplicates_and_schema_versions(scores, broker, ingest_db, make_ingest, subscriber_factory):
    ingest = make_ingest(ingest_db, broker.port).start()
    ingest.wait_subscribed()
    health = subscriber_factory(broker, ["custom/_ingest/+/health"])
    context = EventContext(
        "s1", {"lat": 40.42, "lon": -3.70}, scores.class_names, scores.thresholds, "b", "0" * 64, "dB(A)"
    )
    v2 = build_event(context, scores.rows[0][0], 1764500000.0, 61.0)  # no `clock`: what classify prints offline
    clock = {"synced": False, "max_error_ms": 16000.0}
    v3 = build_event(context, scores.rows[1][0], 1764500010.0, 65.0, clock=clock)
    v3["schema_version"] += 1  # a sensor already on the next schema: accepted during a fleet upgrade
    v3["vetoed"] = ["Jackhammer", "Traffic noise"]  # what a bundle with a veto adds (v2: a bundle without one)
    too_new = {**v2, "event_id": "00000000-0000-4000-8000-000000000001", "schema_version": v2["schema_version"] + 2}
    no_sensor = {k: v for k, v in v2.items() if k != "sensor_id"}
    client = _publisher(broker.port)
    for payload in (json.dumps(v2), json.dumps(v2), json.dumps(v3), b"\xff not json", json.dumps(no_sensor),
                    json.dumps(too_new), "[1, 2]"):  # fmt: skip
        client.publish("custom/s1/events", payload, qos=1).wait_for_publish(5)
    # an hour cut by a restart at 10:20: the partial summary sent on shutdown, the rest of the hour after the restart
    # (same period start), and the partial once more, as the spool redelivers a row whose PUBACK was lost
    partial, rest = hour_in_parts(context, 1764496800.0 + 1200, 1764496800.0 + 3600, 62.0, ["Siren"])
    for summary in (partial, rest, partial):
        client.publish("custom/s1/summary", json.dumps(summary), qos=1).wait_for_publish(5)

    assert wait_rows(ingest_db, "SELECT count(*) FROM rejected", lambda n: n >= 4, timeout=20) == 4, ingest.log()
    assert wait_rows(ingest_db, "SELECT count(*) FROM summaries", lambda n: n >= 2, timeout=20) == 2, ingest.log()
    with psycopg.connect(ingest_db) as conn:
        rows = conn.execute(
            "SELECT event_id::text, schema_version, laeq, lafmax, lafmin, la10, la50, la90, level_unit, clock_synced,"
            " clock_max_error_ms, top_class, vetoed FROM events ORDER BY window_start"
        ).fetchall()
        parts = conn.execute(
            "SELECT period_start, period_end, partial, payload FROM summaries ORDER BY period_end"
        ).fetchall()
        reasons = [r[0] for r in conn.execute("SELECT reason FROM rejected ORDER BY reason")]
        hourly = conn.execute("SELECT events, laeq FROM hourly").fetchall()
        sensor = conn.execute("SELECT ST_X(location), ST_Y(location) FROM sensors WHERE id = 's1'").fetchone()
    assert [r[0] for r in rows] == [v2["event_id"], v3["event_id"]], "duplicate stored or valid event lost"
    for row, sent in zip(rows, (v2, v3), strict=True):
        level = sent["level"]
        assert row[1:9] == (sent["schema_version"], level["laeq"], level["lafmax"], level["lafmin"], level["la10"],
                            level["la50"], level["la90"], "dB(A)"), row  # fmt: skip
        assert row[11] == sent["top"]["name"]
        assert row[12] == sent.get("vetoed"), "vetoed: the classes as sent, NULL when the event has none"
    assert rows[0][9:11] == (None, None), "no clock sent: NULL, not a guess"
    assert rows[1][9:11] == (False, 16000.0)
    ten = datetime(2025, 11, 30, 10, tzinfo=UTC)
    assert [p[:3] for p in parts] == [
        (ten, ten + timedelta(minutes=20), True),
        (ten, ten + timedelta(hours=1), False),
    ], "both parts of the hour stored, the redelivered partial once"
    assert [p[3] for p in parts] == [partial, rest]
    assert any(r.startswith("not JSON") for r in reasons), reasons
    assert any("sensor_id" in r for r in reasons), reasons
    assert any("schema_version" in r for r in reasons), reasons
    assert sum(r.startswith("fails event schema") for r in reasons) == 3, reasons  # incl. the JSON array
    energy_mean = 10 * math.log10((10**6.1 + 10**6.5) / 2)  # 63.45 dB, not the arithmetic 63.0
    assert hourly == [(2, pytest.approx(energy_mean, abs=0.01))], "rollup: 2 events, energy mean of 61 and 65 dB"
    assert sensor == (pytest.approx(-3.70), pytest.approx(40.42))
    assert health.wait_for(
        lambda ms: any(m.json()["rejected"] == 4 and m.json()["duplicates"] == 1 for m in ms), timeout=20
    ), [m.json() for m in health.messages]
    assert ingest.stop() == 0, ingest.log()
    client.loop_stop()


def test_kill9_mid_batch_then_restart_every_event_exactly_once(
    scores, make_broker, ingest_db, make_ingest, subscriber_factory
):
    broker = make_broker(persistence=True, extra_config=QUEUE_ALL)
    health = subscriber_factory(broker, ["custom/_ingest/+/health"])
    a = make_ingest(ingest_db, broker.port, client_id="ingest-a").start("--batch-rows", "500")
    b = make_ingest(ingest_db, broker.port, client_id="ingest-b").start("--batch-rows", "500")
    a.wait_subscribed()
    b.wait_subscribed()
    result: dict = {}
    fleet = _fleet_in_background(broker.port, scores, sensors=100, windows=60, period=0.25, result=result)
    assert wait_rows(ingest_db, "SELECT count(*) FROM events", lambda n: n >= 1000, timeout=60) >= 1000, a.log()
    a.kill()  # mid-stream: batches in flight, rows committed but not yet acknowledged
    assert wait_rows(ingest_db, "SELECT count(*) FROM events", lambda n: n >= 2500, timeout=60) >= 2500, b.log()
    a.start("--batch-rows", "500")
    fleet.join(120)
    assert "sent" in result, "the simulated fleet did not finish publishing"
    sent = result["sent"]
    stored = wait_rows(ingest_db, "SELECT count(*) FROM events", lambda n: n >= len(sent), timeout=120)
    assert stored == len(sent), f"{stored} of {len(sent)} stored\n{a.log()}\n{b.log()}"
    _assert_exactly_once(ingest_db, sent)
    assert _count(ingest_db, "SELECT count(DISTINCT sensor_id) FROM events") == 100
    assert a.stop() == 0 and b.stop() == 0
    last = {m.topic: m.json() for m in health.messages}  # the final health of each ingest, sent as it stops
    print(
        f"\nkill -9: {len(sent)} published, {stored} stored, 0 lost, 0 duplicated rows; redeliveries dropped by "
        f"ON CONFLICT after the restart: {sum(h['duplicates'] for h in last.values())}"
    )


def test_crash_between_commit_and_ack_is_redelivered_and_stored_once(
    scores, make_broker, ingest_db, make_ingest, subscriber_factory
):
    """The worst moment to die: rows committed, PUBACKs not sent. The broker redelivers; ON CONFLICT drops them."""
    broker = make_broker(persistence=True, extra_config=QUEUE_ALL)
    health = subscriber_factory(broker, ["custom/_ingest/+/health"])
    ingest = make_ingest(ingest_db, broker.port)
    ingest.start("--batch-rows", "100", exit_after_commit=3)
    ingest.wait_subscribed()
    result: dict = {}
    fleet = _fleet_in_background(broker.port, scores, sensors=20, windows=30, period=0.2, result=result)
    assert ingest.proc.wait(60) == 137, ingest.log()
    committed_before_crash = _count(ingest_db)
    assert committed_before_crash > 0
    ingest.start("--batch-rows", "100")
    fleet.join(60)
    sent = result["sent"]
    stored = wait_rows(ingest_db, "SELECT count(*) FROM events", lambda n: n >= len(sent), timeout=60)
    if stored != len(sent):
        with psycopg.connect(ingest_db) as conn:
            have = {r[0] for r in conn.execute("SELECT event_id::text FROM events")}
            last = conn.execute("SELECT extract(epoch FROM max(ingested_at)) FROM events").fetchone()[0]
        t0 = min(sent.values())
        print(
            "MISSING",
            sorted(round(t - t0, 3) for e, t in sent.items() if e not in have),
            "crash commit",
            float(last) - t0,
        )
        print(broker.log_tail(60))
    assert stored == len(sent), f"{stored} of {len(sent)} stored\n{ingest.log()}"
    _assert_exactly_once(ingest_db, sent)
    assert ingest.stop() == 0
    redelivered = health.messages[-1].json()["duplicates"]
    assert redelivered > 0, "the committed but unacknowledged batch should have come back from the broker"
    print(f"\ncrash after commit: {len(sent)} published, {stored} stored, {redelivered} redelivered and dropped")


def test_database_outage_pauses_then_resumes_without_loss(
    scores, make_broker, pg_cluster, ingest_db, make_ingest, tmp_path
):
    broker = make_broker(persistence=True, extra_config=QUEUE_ALL)
    config = tmp_path / "ingest.yaml"
    config.write_text("mqtt:\n  receive_maximum: 200\n")  # small window: the broker, not the ingest, holds the rest
    ingest = make_ingest(ingest_db, broker.port).start("--config", str(config))
    ingest.wait_subscribed()
    result: dict = {}
    fleet = _fleet_in_background(broker.port, scores, sensors=50, windows=40, period=1.0, result=result)
    assert wait_rows(ingest_db, "SELECT count(*) FROM events", lambda n: n >= 200, timeout=30) >= 200, ingest.log()
    pg_cluster.stop()
    try:
        deadline = time.monotonic() + 20
        while "database unavailable" not in ingest.log():
            assert time.monotonic() < deadline, ingest.log()
            time.sleep(0.1)
        time.sleep(30)  # the outage itself: the fleet keeps publishing meanwhile
        assert ingest.proc.poll() is None, "the ingest must pause, not exit, while the database is away"
    finally:
        pg_cluster.start()
    fleet.join(120)
    sent = result["sent"]
    stored = wait_rows(ingest_db, "SELECT count(*) FROM events", lambda n: n >= len(sent), timeout=120)
    assert stored == len(sent), f"{stored} of {len(sent)} stored\n{ingest.log()}"
    _assert_exactly_once(ingest_db, sent)
    assert "database back" in ingest.log()
    assert ingest.stop() == 0
    print(f"\ndatabase outage: {len(sent)} published, {stored} stored, 0 lost, 0 duplicated rows")


def test_migrate_retention_and_bad_config(ingest_db, capsys, tmp_path):
    assert ingest_cli(["migrate", "--dsn", ingest_db]) == 0
    assert "schema up to date" in capsys.readouterr().out
    with psycopg.connect(ingest_db) as conn:
        for day in ("2020-01-01", "2020-01-02"):
            conn.execute(
                f"CREATE TABLE events_{day.replace('-', '')} PARTITION OF events FOR VALUES FROM ('{day}') TO "
                f"('{day}'::date + 1)"
            )
        conn.execute(
            "CREATE TABLE events_29990101 PARTITION OF events FOR VALUES FROM ('2999-01-01') TO ('2999-01-02')"
        )
    assert ingest_cli(["retention", "--dsn", ingest_db, "--days", "30"]) == 0
    assert "events_20200101 events_20200102" in capsys.readouterr().out
    assert _count(ingest_db, "SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE 'events_2%'") == 1

    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  receive_maximum: 0\n")
    assert ingest_cli(["run", "--config", str(bad)]) == 78
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ingest.mqtt.receive_maximum" in err
    bad.write_text("batch_rowz: 5\n")
    assert ingest_cli(["run", "--config", str(bad)]) == 78
    assert "ingest.batch_rowz: unknown key" in capsys.readouterr().err
    bad.write_text(f"mqtt: {{username: ingest, password_file: {tmp_path / 'absent'}}}\n")
    assert ingest_cli(["run", "--dsn", ingest_db, "--config", str(bad)]) == 78
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mqtt.password_file" in err and "No such file or directory" in err, err
    assert ingest_cli(["migrate", "--dsn", "host=127.0.0.1 port=1 dbname=x connect_timeout=1"]) == 69


def test_end_to_end_from_the_daemon_to_a_row(
    yamnet_bundle, shared, virtual_mic, broker, subscriber_factory, make_daemon, ingest_db, make_ingest, tmp_path
):
    """A real clip through the virtual mic, the real daemon, mosquitto and the ingest into `events` and `sensors`."""
    from testing.daemon import daemon_config

    ingest = make_ingest(ingest_db, broker.port).start()
    ingest.wait_subscribed()
    listener = subscriber_factory(broker, ["custom/test-sensor/events"])
    virtual_mic.play(shared / "data/clips" / CLIPS[0], loop=True)
    daemon = make_daemon(daemon_config(yamnet_bundle, broker.port, tmp_path / "spool.sqlite"), env=virtual_mic.env)
    daemon.start()
    heard = "SELECT count(*) FROM events WHERE sensor_id = 'test-sensor' AND labels @> '{Siren}'"
    assert wait_rows(ingest_db, heard, lambda n: n >= 1, timeout=120) >= 1, f"{daemon.log()}\n{ingest.log()}"
    assert listener.wait_for(lambda ms: len(ms) >= _count(ingest_db), timeout=10)
    published = {m.json()["event_id"]: m.json() for m in listener.messages}
    with psycopg.connect(ingest_db) as conn:
        rows = conn.execute(
            "SELECT event_id::text, scores, labels, laeq, lafmax, lafmin, la10, la50, la90, level_unit, clock_synced"
            " FROM events ORDER BY window_start"
        ).fetchall()
        sensor = conn.execute("SELECT ST_Y(location), ST_X(location), name FROM sensors").fetchall()
    for event_id, stored_scores, labels, *levels, unit, synced in rows:
        sent = published[event_id]  # every row is an event the daemon published, with its scores and level intact
        assert stored_scores == sent["scores"]
        assert labels == [label["name"] for label in sent["labels"]]
        names = ("laeq", "lafmax", "lafmin", "la10", "la50", "la90")
        assert levels == [pytest.approx(sent["level"][k], abs=0.05) for k in names]
        assert (unit, synced) == (sent["level"]["unit"], sent["clock"]["synced"])
    assert sensor == [(pytest.approx(40.4169), pytest.approx(-3.7035), "Puerta del Sol")]
    assert daemon.stop() == 0
    partial = "SELECT count(*) FROM summaries WHERE sensor_id = 'test-sensor' AND partial"
    assert wait_rows(ingest_db, partial, lambda n: n >= 1, timeout=20) == 1, "the shutdown summary was not stored"
    assert _count(ingest_db, "SELECT count(*) FROM rejected") == 0, "the ingest refused something the daemon sent"
    assert ingest.stop() == 0


def test_migrate_as_a_plain_owner_says_what_a_superuser_must_run(capsys):
    """A database owner without superuser rights (how a city's DBA hands out databases): each right missing ends
    `migrate` with exit 78 and one line naming it and the statement to run; a superuser runs it, migrate passes.
    Its own cluster, so `custom_reader` (cluster-wide) does not exist yet whatever ran before."""
    import re
    import shutil
    import tempfile

    from testing.broker import free_port
    from testing.postgres import PgCluster, _unprivileged_user

    run_as = _unprivileged_user()
    top = Path(tempfile.mkdtemp(prefix="custom-pg-owner-"))  # not under pytest's tmp: the postgres user must enter it
    if run_as:
        shutil.chown(top, run_as, run_as)
    cluster = PgCluster(top / "pg", free_port(), run_as)
    cluster.init()
    cluster.start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE ROLE city_owner LOGIN")
            conn.execute("CREATE DATABASE city OWNER city_owner")
        owner_dsn = cluster.dsn("city").replace(f"user={cluster.user}", "user=city_owner")
        refusals = []
        for _ in range(3):
            code = ingest_cli(["migrate", "--dsn", owner_dsn])
            err = capsys.readouterr().err.strip()
            if code == 0:
                break
            assert code == 78 and err.count("\n") == 0 and "Traceback" not in err, (code, err)
            refusals.append(err)
            run = re.search(r'as a superuser run once: psql (?:-d "(\w+)" )?-c "([^"]+)"', err)
            assert run, err
            with psycopg.connect(cluster.dsn(run.group(1) or "postgres"), autocommit=True) as conn:
                conn.execute(run.group(2))
        assert code == 0, refusals
        assert len(refusals) == 2, refusals
        assert 'create extension "postgis"' in refusals[0] and "001_schema.sql" in refusals[0], refusals
        assert "create role" in refusals[1] and "002_alerts_dashboard.sql" in refusals[1], refusals
        print("\n" + "\n".join(refusals))
        assert ingest_cli(["migrate", "--dsn", owner_dsn]) == 0
    finally:
        cluster.stop("immediate")
        shutil.rmtree(top, ignore_errors=True)
