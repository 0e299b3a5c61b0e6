"""Exceedance alerts through the real path: events published to a real mosquitto, `custom-ingest run` with alert rules
in its config, the `alerts` table in the real PostgreSQL, the retained `<prefix>/_alerts/<sensor>` topic, and the
dashboard's alert list in a real Chromium. Includes a crash between the commit that opens an episode and its
acknowledgement (the one place a duplicate could come from)."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
import psycopg
import pytest

from custom.ingest.config import load_config
from custom.wire.settings import ConfigError
from testing.dashboard import FixtureSensor, fixture_event, log_in, reader_dsn
from testing.ingest import WINDOW_S, wait_rows
from tests.conftest import ROOT

RULES = """
timezone: Europe/Madrid
alerts:
  check_s: 0.5
  rules:
    - {name: loud, laeq_above: 65, minutes: 1}
    - {name: sirens, class: Siren, more_than: 2, minutes: 10}
    - {name: sirens-minute, class: Siren, more_than: 2, minutes: 1}
    - {name: dead, silent_minutes: 3}
"""
LOUD = FixtureSensor("L", 40.4169, -3.7035, "Siren", 70.0, 0.0)
GONE = FixtureSensor("S", 40.4100, -3.6900, "Dog", 50.0, 600.0)


def _episodes(dsn: str, sensor: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT rule, opened_at, closed_at FROM alerts WHERE sensor_id = %s ORDER BY rule, opened_at", (sensor,)
        ).fetchall()


def _events(dsn: str, sensor: str) -> str:
    return f"SELECT count(*) FROM events WHERE sensor_id = '{sensor}'"


def _opened(dsn: str, sensor: str, rule: str) -> str:
    return f"SELECT count(*) FROM alerts WHERE sensor_id = '{sensor}' AND rule = '{rule}'"


def _closed(dsn: str, sensor: str, rule: str) -> str:
    return _opened(dsn, sensor, rule) + " AND closed_at IS NOT NULL"


def test_rules_fire_once_per_episode_across_a_crash_and_show_on_the_page(
    broker, ingest_db, pg_cluster, make_ingest, subscriber_factory, make_dashboard, browser, tmp_path
):
    config = tmp_path / "ingest.yaml"
    config.write_text(RULES)
    alerts_seen = subscriber_factory(broker, ["custom/_alerts/#"])
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    page = browser.page
    log_in(page, make_dashboard(reader_dsn(pg_cluster, ingest_db)).url)
    page.wait_for_selector("body[data-ready='1']", timeout=20000)
    assert page.locator("#alerts").get_attribute("data-count") == "0"

    # L: the 6th loud window completes a minute of LAeq 70 > 65 (and its 3rd siren window passes "more than 2");
    # the ingest is made to die right after the commit of that 6th window, before acknowledging or publishing it
    ingest = make_ingest(ingest_db, broker.port).start("--config", str(config), exit_after_commit=7)
    ingest.wait_subscribed()
    # S: last heard 10 minutes ago -> the silent rule opens an episode at last_seen + 3 min
    gone_end = time.time() - GONE.silent_for_s
    client.publish("custom/S/events", fixture_event(GONE, gone_end - WINDOW_S, 50.0), qos=1).wait_for_publish(5)
    t0 = time.time() - 100
    t0 -= t0 % WINDOW_S
    assert wait_rows(ingest_db, _events(ingest_db, "S"), lambda n: n == 1, 20) == 1, ingest.log()
    for k in range(6):
        heard = "Siren" if k < 3 else "Dog"
        client.publish("custom/L/events", fixture_event(LOUD, t0 + k * WINDOW_S, 70.0, heard), qos=1)
        if k < 5:
            assert wait_rows(ingest_db, _events(ingest_db, "L"), lambda n, k=k: n == k + 1, 20) == k + 1, ingest.log()
            # the rules run in their own transaction right after the batch's: the row can be seen a moment before
            # its episode, so wait for the episode (a premature opening is caught by the opening times below)
            wait_rows(ingest_db, _opened(ingest_db, "L", "sirens"), lambda n, k=k: n == (k >= 2), 20)
            rules = [r[0] for r in _episodes(ingest_db, "L")]
            assert "loud" not in rules, f"opened after {k + 1} windows: a minute is 6"
            assert ("sirens" in rules) == (k >= 2), f"after {k + 1} siren windows: {rules}"
    ingest.proc.wait(30)
    assert ingest.proc.returncode == 137, ingest.log()
    opened = {r[0]: r for r in _episodes(ingest_db, "L")}
    assert set(opened) == {"loud", "sirens", "sirens-minute"} and opened["loud"][1].timestamp() == t0 + 6 * WINDOW_S
    assert opened["sirens"][1].timestamp() == t0 + 3 * WINDOW_S  # the window end where the 3rd siren was heard

    # restart: the 6th window is redelivered (never acknowledged) and re-evaluated, the state republished
    ingest = make_ingest(ingest_db, broker.port).start("--config", str(config))
    ingest.wait_subscribed()
    assert alerts_seen.wait_for(
        lambda ms: any(m.topic == "custom/_alerts/L" and len(m.json()["open"]) == 3 for m in ms), 20
    ), ingest.log()
    assert alerts_seen.wait_for(
        lambda ms: any(m.topic == "custom/_alerts/S" and [a["rule"] for a in m.json()["open"]] == ["dead"] for m in ms),
        20,
    ), ingest.log()
    (dead,) = _episodes(ingest_db, "S")
    assert dead[1].timestamp() == pytest.approx(gone_end + 180, abs=0.01) and dead[2] is None

    # quiet windows: the minute's energy mean drops to 65 dB or below at the 5th (1 loud + 5 at 50 dB)
    for k in range(6, 11):
        client.publish("custom/L/events", fixture_event(LOUD, t0 + k * WINDOW_S, 50.0, "Dog"), qos=1)
        assert wait_rows(ingest_db, _events(ingest_db, "L"), lambda n, k=k: n == k + 1, 20) == k + 1, ingest.log()
        # as when opening: the row is visible a moment before its rules ran, so wait for the closing (a premature
        # one is caught by the closing time asserted below)
        wait_rows(ingest_db, _closed(ingest_db, "L", "loud"), lambda n, k=k: n == (k == 10), 20)
        loud = [r for r in _episodes(ingest_db, "L") if r[0] == "loud"]
        assert len(loud) == 1, f"a second 'loud' episode: {loud}"
        assert (loud[0][2] is not None) == (k == 10), f"after {k - 5} quiet windows: {loud}"
    assert loud[0][2].timestamp() == t0 + 11 * WINDOW_S
    # the 1-minute siren count fell to 2 at the first window after the crash (a batch that heard no siren)
    (minute,) = [r for r in _episodes(ingest_db, "L") if r[0] == "sirens-minute"]
    assert minute[2] is not None and minute[2].timestamp() == t0 + 7 * WINDOW_S, minute
    # S speaks again: its silent episode closes at the next commit
    client.publish("custom/S/events", fixture_event(GONE, t0 + 11 * WINDOW_S, 50.0), qos=1)
    assert wait_rows(ingest_db, "SELECT count(*) FROM alerts WHERE closed_at IS NOT NULL", lambda n: n == 3, 20) == 3
    assert alerts_seen.wait_for(
        lambda ms: [m.json()["open"] for m in ms if m.topic == "custom/_alerts/S"][-1:] == [[]], 20
    ), "S's cleared state was not published"

    with psycopg.connect(ingest_db) as conn:
        assert conn.execute("SELECT rule, sensor_id, count(*) FROM alerts GROUP BY 1, 2 ORDER BY 1, 2").fetchall() == [
            ("dead", "S", 1), ("loud", "L", 1), ("sirens", "L", 1), ("sirens-minute", "L", 1)
        ], "one episode per rule and sensor, across the crash"  # fmt: skip
    retained = subscriber_factory(broker, ["custom/_alerts/+"])
    assert retained.wait_for(
        lambda ms: {m.topic for m in ms if m.retain} >= {"custom/_alerts/L", "custom/_alerts/S"}, 10
    )
    page.wait_for_function("document.getElementById('alerts').dataset.count === '4'", timeout=20000)
    rows = page.locator("#alerts tr").all_inner_texts()
    assert any("dead" in r and "S" in r for r in rows) and any("loud" in r and "LAeq,1min" in r for r in rows), rows
    page.screenshot(path=str(tmp_path / "alerts.png"), full_page=True)
    assert ingest.stop() == 0, ingest.log()
    client.loop_stop()


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("[{name: a, laeq_above: loud}]", "rules[0].laeq_above: expected a number"),
        ("[{name: a, laeq_above: 60, between: '23-07'}]", "rules[0].between"),
        ("[{name: a, class: Siren}]", "rules[0].more_than"),
        ("[{name: a, silent_minutes: 5, minutes: 3}]", "rules[0].minutes: not a key of a silent rule"),
        ("[{name: a, laeq_above: 60, class: Siren}]", "rules[0]: give exactly one of"),
        ("[{name: a, silent_minutes: 5}, {name: a, silent_minutes: 9}]", "'a' is used twice"),
        ("[{name: 'a b', silent_minutes: 5}]", "rules[0].name"),
    ],
)
def test_bad_rules_name_the_key(tmp_path, rules, message):
    path = tmp_path / "ingest.yaml"
    path.write_text(f"alerts:\n  rules: {rules}\n")
    with pytest.raises(ConfigError, match="ingest.alerts.") as caught:
        load_config(path)
    assert message in str(caught.value)


def test_rules_parse_into_the_config(tmp_path):
    path = tmp_path / "ingest.yaml"
    path.write_text(RULES + "dashboard: {port: 8123, tile_url: ''}\n")
    config = load_config(path)
    assert [(r.name, r.kind, r.threshold, r.minutes, r.label) for r in config.alerts.rules] == [
        ("loud", "level", 65.0, 1, None), ("sirens", "class", 2.0, 10, "Siren"),
        ("sirens-minute", "class", 2.0, 1, "Siren"), ("dead", "silent", 0.0, 3, None),
    ]  # fmt: skip
    assert config.timezone == "Europe/Madrid" and config.dashboard.port == 8123
    path.write_text("timezone: Mars/Olympus\n")
    with pytest.raises(ConfigError, match="ingest.timezone"):
        load_config(path)
    assert config.alerts.check_s == 0.5


def test_the_example_config_loads():
    config = load_config(ROOT / "ingest/ingest.example.yaml")
    assert [r.name for r in config.alerts.rules] == ["night-noise", "sirens", "dead-sensor"]
    night = config.alerts.rules[0]
    assert (night.start.hour, night.end.hour, night.minutes) == (23, 7, 5)
