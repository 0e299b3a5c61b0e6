"""How the ingest judges one message: event schema from the daemon package (version pin widened by one), summaries
checked against a summary schema only when one exists, dates PostgreSQL would refuse caught before the database."""

from __future__ import annotations

import json

from custom.daemon.event import EventContext
from custom.ingest.records import EventRow, Judge, Rejection, SummaryRow

CONTEXT = EventContext("s1", {"lat": 40.4, "lon": -3.7}, ("Siren", "Dog"), (0.5, 0.5), "b", "0" * 64, "dB(A)")
SUMMARY_SCHEMA = {
    "type": "object",
    "required": ["sensor_id", "hour_start", "laeq"],
    "properties": {"laeq": {"type": "number"}},
}


def _event(**changes) -> dict:
    event = CONTEXT.build([0.9, 0.1], 1764500000.0, 1764500010.0, 60.0, 3.0)
    event.update(changes)
    return event


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


def test_summaries_checked_only_when_a_schema_exists():
    good = {"sensor_id": "s1", "hour_start": "2026-11-25T13:00:00.000Z", "laeq": 61.2}
    bad = {"sensor_id": "s1", "hour_start": "2026-11-25T13:00:00.000Z", "laeq": "loud"}
    strict = Judge(summary_schema=SUMMARY_SCHEMA)
    assert isinstance(strict.judge("custom/s1/summary", json.dumps(good).encode()), SummaryRow)
    refused = strict.judge("custom/s1/summary", json.dumps(bad).encode())
    assert isinstance(refused, Rejection) and refused.reason.startswith("fails summary schema: laeq")
    lenient = Judge(summary_schema=None)  # no summary.schema.json shipped (yet): stored as sent, keyed by its hour
    if lenient._summary is None:
        row = lenient.judge("custom/s1/summary", json.dumps(bad).encode())
        assert isinstance(row, SummaryRow) and row.hour_start == bad["hour_start"]
    no_hour = lenient.judge("custom/s1/summary", json.dumps({"sensor_id": "s1", "laeq": 1.0}).encode())
    assert isinstance(no_hour, Rejection)
