"""The city team's documented queries (ingest/queries/*.sql, quoted in ingest/README.md) on a known fixture fleet,
stored through the ingest's own write path into a real PostgreSQL + PostGIS."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import psycopg
import pytest

from custom.daemon.publish.event import EventContext
from custom.ingest.named_queries import ALERTS, DASHBOARD, NAMES, query
from custom.ingest.records import Judge
from custom.ingest.store import Store, connect
from testing.ingest import build_event, hour_in_parts
from tests.conftest import ROOT

CLASSES = ("Siren", "Dog", "Vehicle horn")
HOUR = datetime(2026, 11, 25, 13, tzinfo=UTC)
T13 = HOUR.timestamp()


def _context(sensor: str, lat: float, lon: float) -> EventContext:
    return EventContext(sensor, {"lat": lat, "lon": lon}, CLASSES, (0.5, 0.5, 0.5), "b", "0" * 64, "dB(A)")


def _event(sensor: str, lat: float, lon: float, heard: str, start: float, laeq: float) -> bytes:
    context = _context(sensor, lat, lon)
    scores = [0.9 if name == heard else 0.01 for name in CLASSES]
    return json.dumps(build_event(context, scores, start, laeq)).encode()


@pytest.fixture
def fleet_db(ingest_db: str) -> str:
    """A: two sirens at 13:00 (60 and 70 dB), a dog at 14:00 (50 dB); B: a dog at 13:30 (80 dB); C: a horn at 13:05.
    Summaries: A's 13:00 hour in two parts (restart at 13:20: 20 min at 60 dB, then 40 min at 70 dB), the partial
    one delivered twice; B's 13:00 hour whole (60 min at 55 dB)."""
    messages = [
        _event("A", 40.4169, -3.7035, "Siren", T13, 60.0),
        _event("A", 40.4169, -3.7035, "Siren", T13 + 10, 70.0),
        _event("A", 40.4169, -3.7035, "Dog", T13 + 3600, 50.0),
        _event("B", 40.4200, -3.7050, "Dog", T13 + 1800, 80.0),
        _event("C", 40.4100, -3.6900, "Vehicle horn", T13 + 300, 55.0),
    ]
    judge = Judge()
    rows = [judge.judge(f"custom/{json.loads(m)['sensor_id']}/events", m) for m in messages]
    a, b = _context("A", 40.4169, -3.7035), _context("B", 40.4200, -3.7050)
    a_partial, _ = hour_in_parts(a, T13 + 1200, T13 + 3600, 60.0, ["Siren"])
    _, a_rest = hour_in_parts(a, T13 + 1200, T13 + 3600, 70.0, ["Siren"])
    _, b_hour = hour_in_parts(b, T13, T13 + 3600, 55.0)
    summaries = [
        judge.judge(f"custom/{s['sensor_id']}/summary", json.dumps(s).encode()) for s in (a_partial, a_rest, b_hour)
    ]
    with connect(ingest_db) as conn:
        Store(conn).write(rows, summaries, [])
        Store(conn).write([], summaries[:1], [])  # the partial redelivered
    return ingest_db


def _run(dsn: str, name: str, **params) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        return conn.execute(query(name), params).fetchall()


def test_events_per_class_per_hour(fleet_db):
    rows = _run(fleet_db, "events_per_class_per_hour", sensor_id="A", since=HOUR, until=HOUR.replace(hour=15))
    assert [(h.hour, c, n) for h, c, n in rows] == [(13, "Siren", 2), (14, "Dog", 1)]


def test_loudest_hours_energy_averaged(fleet_db):
    rows = _run(fleet_db, "loudest_hours", since=HOUR, limit=2)
    a_13 = round(10 * math.log10((10**6 + 10**7) / 2), 1)  # 67.4, not the arithmetic 65
    assert [(s, h.hour, float(db), n) for s, h, db, n in rows] == [("B", 13, 80.0, 1), ("A", 13, a_13, 2)]


def test_silent_sensors(fleet_db):
    at = datetime(2026, 11, 25, 14, 5, tzinfo=UTC)  # A's last window ended 14:00:10: 4 min 50 s, still alive
    rows = _run(fleet_db, "silent_sensors", at=at)
    assert [(s, int(silent.total_seconds())) for s, _, silent in rows] == [("C", 3590), ("B", 2090)]


def test_sensor_map_geojson(fleet_db):
    (geojson,) = _run(fleet_db, "sensor_map")[0]
    assert geojson["type"] == "FeatureCollection"
    got = {
        f["properties"]["sensor_id"]: (
            f["geometry"]["coordinates"],
            f["properties"]["top_class"],
            f["properties"]["laeq"],
            f["properties"]["hour_start"][:13],
        )
        for f in geojson["features"]
    }
    assert got == {
        "A": ([-3.7035, 40.4169], "Dog", 50.0, "2026-11-25T14"),
        "B": ([-3.705, 40.42], "Dog", 80.0, "2026-11-25T13"),
        "C": ([-3.69, 40.41], "Vehicle horn", 55.0, "2026-11-25T13"),
    }


def test_summary_hours_puts_an_hour_in_parts_back_together(fleet_db):
    rows = _run(fleet_db, "summary_hours", sensor_id="A", since=HOUR, until=HOUR.replace(hour=15))
    laeq = round(10 * math.log10((20 * 10**6 + 40 * 10**7) / 60), 1)  # 68.5: minutes-weighted energy mean
    assert [(s, h, n, float(m), w, float(db)) for s, h, n, m, w, db, _, _ in rows] == [("A", HOUR, 2, 60.0, 360, laeq)]
    assert rows[0][6] >= 70.0 and rows[0][7] == 0  # LAFmax of the louder part; every window on a synced clock
    rows = _run(fleet_db, "summary_hours", sensor_id="B", since=HOUR, until=HOUR.replace(hour=15))
    assert [(n, float(m), w, float(db)) for _, _, n, m, w, db, _, _ in rows] == [(1, 60.0, 360, 55.0)]


def test_readme_quotes_the_tested_sql():
    readme = (ROOT / "ingest/README.md").read_text()
    for name in (*NAMES, *DASHBOARD, *ALERTS):
        assert query(name).strip() in readme, f"ingest/README.md does not quote ingest/queries/{name}.sql verbatim"
