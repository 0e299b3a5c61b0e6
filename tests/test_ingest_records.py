"""How the ingest judges one message: event and summary schemas from custom.wire (version pins widened by one),
each message built by the daemon's own code, dates PostgreSQL would refuse caught before the database."""

from __future__ import annotations

import json

import jsonschema
import pytest

from custom.daemon.publish.event import EventContext
from custom.ingest.records import EventRow, Judge, Rejection, SummaryRow
from custom.wire import schemas
from testing.ingest import build_event, hour_in_parts

CONTEXT = EventContext("s1", {"lat": 40.4, "lon": -3.7}, ("Siren", "Dog"), (0.5, 0.5), "b", "0" * 64, "dB(A)")
T0 = 1764500400.0  # 2025-11-30T11:00:00Z


def _event(**changes) -> dict:
    event = build_event(CONTEXT, [0.9, 0.1], T0, 60.0, clock={"synced": True, "max_error_ms": 12.5})
    event.update(changes)
    return event


def test_fixtures_are_what_the_daemon_schemas_describe():
    event = _event()
    jsonschema.validate(event, schemas.load(schemas.EVENT))
    assert event["level"]["laeq"] == 60.0 and event["level"]["unit"] == "dB(A)"
    assert event["level"]["lafmin"] <= event["level"]["la90"] <= event["level"]["lafmax"]
    partial, rest = hour_in_parts(CONTEXT, T0 + 1200, T0 + 3600, 60.0, ["Siren"])
    for summary in (partial, rest):
        jsonschema.validate(summary, schemas.load(schemas.SUMMARY))
    assert partial["period"]["start"] == rest["period"]["start"] == "2025-11-30T11:00:00.000Z"
    assert (partial["period"]["partial"], rest["period"]["partial"]) == (True, False)
    assert (partial["minutes_covered"], rest["minutes_covered"]) == (20.0, 40.0)


def test_versions_from_one_to_one_past_the_shipped_schema():
    judge = Judge()
    assert judge.accepted_versions == tuple(range(1, judge.shipped_version + 2))
    for version in judge.accepted_versions:
        assert isinstance(
            judge.judge("custom/s1/events", json.dumps(_event(schema_version=version)).encode()), EventRow
        )
    too_new = judge.judge("custom/s1/events", json.dumps(_event(schema_version=judge.shipped_version + 2)).encode())
    assert isinstance(too_new, Rejection) and too_new.reason.startswith("fails event schema: schema_version")


def test_a_date_that_does_not_exist_is_rejected_before_the_database():
    event = _event()
    event["window"]["start"] = "2026-02-30T10:00:00.000Z"
    judged = Judge().judge("custom/s1/events", json.dumps(event).encode())
    assert isinstance(judged, Rejection) and "not a calendar date" in judged.reason
    partial, _ = hour_in_parts(CONTEXT, T0 + 1200, T0 + 3600, 60.0)
    partial["period"]["end"] = "2026-02-30T10:20:00.000Z"
    judged = Judge().judge("custom/s1/summary", json.dumps(partial).encode())
    assert isinstance(judged, Rejection) and judged.reason.startswith("period/end: 2026-02-30")


def test_summaries_keyed_by_their_period_and_checked_against_the_schema():
    judge = Judge()
    partial, rest = hour_in_parts(CONTEXT, T0 + 1200, T0 + 3600, 60.0, ["Siren"])
    rows = [judge.judge("custom/s1/summary", json.dumps(s).encode()) for s in (partial, rest)]
    assert all(isinstance(r, SummaryRow) for r in rows), rows
    assert [(r.sensor_id, r.period_start, r.period_end, r.partial) for r in rows] == [
        ("s1", "2025-11-30T11:00:00.000Z", "2025-11-30T11:20:00.000Z", True),
        ("s1", "2025-11-30T11:00:00.000Z", "2025-11-30T12:00:00.000Z", False),
    ]
    assert json.loads(rows[0].payload) == partial
    bad = {**partial, "level": {**partial["level"], "laeq": "loud"}}
    refused = judge.judge("custom/s1/summary", json.dumps(bad).encode())
    assert isinstance(refused, Rejection) and refused.reason.startswith("fails summary schema: level/laeq")
    no_period = {k: v for k, v in partial.items() if k != "period"}
    refused = judge.judge("custom/s1/summary", json.dumps(no_period).encode())
    assert isinstance(refused, Rejection) and "period" in refused.reason


def test_identity_is_the_topic_not_the_payload():
    judge = Judge()
    mine = judge.judge("custom/s1/events", json.dumps(_event()).encode())
    assert isinstance(mine, EventRow) and mine.sensor_id == "s1"
    forged = judge.judge("custom/s2/events", json.dumps(_event()).encode())  # s2's topic, s1's name
    assert isinstance(forged, Rejection) and forged.identity, forged
    assert forged.reason == "sensor_id: payload names 's1' but its topic is sensor 's2''s"
    partial, _ = hour_in_parts(CONTEXT, T0 + 1200, T0 + 3600, 60.0)
    summary = judge.judge("custom/s2/summary", json.dumps(partial).encode())
    assert isinstance(summary, Rejection) and summary.identity and "payload names 's1'" in summary.reason
    assert isinstance(Judge(prefix="city").judge("city/s1/events", json.dumps(_event()).encode()), EventRow)


@pytest.mark.parametrize(
    ("topic", "says"),
    [
        ("custom/events", "is not custom/<sensor_id>/events|summary"),
        ("other/s1/events", "is not custom/<sensor_id>/events|summary"),
        ("custom/s1/events/more", "is not custom/<sensor_id>/events|summary"),
        ("custom/s1/status", "'status' is not one of events, summary"),
        ("custom/a b/events", "'a b' is not a sensor id"),
        ("custom//events", "'' is not a sensor id"),
        ("custom/_alerts/events", "never starts with '_'"),
    ],
)
def test_a_topic_that_is_not_a_sensors_is_rejected(topic, says):
    judged = Judge().judge(topic, json.dumps(_event()).encode())
    assert isinstance(judged, Rejection) and judged.identity and says in judged.reason, judged


@pytest.mark.parametrize(
    ("change", "says"),
    [  # each found by tests/test_fuzz.py: accepted by the judge, then refused by PostgreSQL (or by the partitioner)
        (lambda e: e["top"].update(score=1.2e-167), "top/score: 1.2e-167 is outside the stored range"),
        (lambda e: e["level"].update(laeq=10**400), "level/laeq: 1000000000000000000000000000000000000000 is"),
        (lambda e: e.update(extra={"\x00": None}), "a string holds \\u0000"),
        (lambda e: e["window"].update(start="9999-12-31T23:59:59.999Z"), "9999-12-31 is past the last day"),
    ],
)
def test_what_the_database_would_refuse_is_rejected_by_the_judge(change, says):
    event = _event()
    change(event)
    judged = Judge().judge("custom/s1/events", json.dumps(event).encode())
    assert isinstance(judged, Rejection) and says in judged.reason, judged
    for number in (b"1e400", b"NaN", b"-Infinity", b"1" + b"0" * 400 + b".0"):  # json.loads makes them inf or nan
        text = json.dumps(_event()).replace('"laeq": 60.0', '"laeq": ' + number.decode()).encode()
        refused = Judge().judge("custom/s1/events", text)
        assert isinstance(refused, Rejection), refused  # by the schema (inf is no number to it) or as not storable
