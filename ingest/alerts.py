"""Exceedance alerts: the config's rules evaluated in PostgreSQL, one `alerts` row per episode, state published.

Every rule is one parameterised query (ingest/queries/alert_*.sql) that says, per sensor, whether its condition holds
on the sensor's latest data, from when, and why. Level and class rules run for the sensors of each committed batch,
before the batch is acknowledged (so a crash re-runs them on the redelivery); silent rules run on a timer over all
sensors. Opening and closing are plain INSERT/UPDATE statements guarded by the table's constraints (one open episode
per rule and sensor, an episode identified by a data-derived opening time), never by memory: a restarted ingest, or two
ingests evaluating one sensor, cannot open an episode twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from custom.wire.topics import fleet_topic

from .alert_rules import AlertRule, AlertSettings
from .named_queries import query
from .records import EventRow

_OPEN = """
INSERT INTO alerts (rule, kind, sensor_id, opened_at, value, detail)
SELECT %(rule)s, %(kind)s, u.sensor_id, u.at, u.value, u.detail
  FROM unnest(%(sensors)s::text[], %(ats)s::timestamptz[], %(values)s::float8[], %(details)s::text[])
       AS u(sensor_id, at, value, detail)
ON CONFLICT DO NOTHING
RETURNING sensor_id
"""

_CLOSE = """
UPDATE alerts AS a SET closed_at = greatest(u.at, a.opened_at)
  FROM unnest(%(sensors)s::text[], %(ats)s::timestamptz[]) AS u(sensor_id, at)
 WHERE a.rule = %(rule)s AND a.sensor_id = u.sensor_id AND a.closed_at IS NULL
RETURNING a.sensor_id
"""

# What is published retained on <prefix>/_alerts/<sensor>: the sensor's open episodes (an empty list clears it).
_STATE = """
SELECT s.id, coalesce(json_agg(json_build_object('rule', a.rule, 'kind', a.kind, 'opened_at', a.opened_at,
                                                 'value', a.value, 'detail', a.detail) ORDER BY a.rule)
                      FILTER (WHERE a.id IS NOT NULL), '[]'::json)
  FROM unnest(%(sensors)s::text[]) AS s(id)
  LEFT JOIN alerts AS a ON a.sensor_id = s.id AND a.closed_at IS NULL
 GROUP BY s.id
"""

_RECENT = "SELECT DISTINCT sensor_id FROM alerts WHERE closed_at IS NULL OR closed_at > %(since)s"

# The earliest latest-window of a batch's sensors: below it no window start is needed, so the rule queries can take a
# constant lower bound and PostgreSQL plans them over the last day partitions only (runtime pruning of a month of
# partitions, once per sensor, cost ~4 ms per sensor: seconds per batch at 1,000 sensors).
_EARLIEST = "SELECT min(last_seen) FROM sensors WHERE id = ANY(%(sensors)s)"


class Alerts:
    """The rules of one ingest; stateless between calls (all state is in the `alerts` table)."""

    def __init__(self, settings: AlertSettings, timezone: str, topic_prefix: str) -> None:
        self.settings = settings
        self.timezone = timezone
        self.topic_prefix = topic_prefix

    def topic(self, sensor_id: str) -> str:
        return fleet_topic(self.topic_prefix, "alerts", sensor_id)

    def on_commit(self, conn: psycopg.Connection[Any], events: Sequence[EventRow]) -> set[str]:
        """Evaluate every rule for the sensors of a committed batch; returns the sensors whose episodes changed."""
        if not self.settings.rules or not events:
            return set()
        heard: dict[str, set[str]] = {}
        for row in events:
            heard.setdefault(row.sensor_id, set()).update(row.labels)
        return self._evaluate(conn, self.settings.rules, sorted(heard), heard=heard)

    def on_timer(self, conn: psycopg.Connection[Any], now: datetime | None = None) -> set[str]:
        """Evaluate the silent rules over every sensor (a silent sensor sends no batch that could trigger them)."""
        rules = self.settings.of_kind("silent")
        return self._evaluate(conn, rules, None, now) if rules else set()

    def _evaluate(
        self,
        conn: psycopg.Connection[Any],
        rules: Sequence[AlertRule],
        sensors: list[str] | None,
        now: datetime | None = None,
        heard: dict[str, set[str]] | None = None,
    ) -> set[str]:
        changed: set[str] = set()
        with conn.transaction():
            earliest = conn.execute(_EARLIEST, {"sensors": sensors}).fetchone() if sensors is not None else None
            for rule in rules:
                params = self._params(rule, sensors, now)
                if earliest is not None and earliest[0] is not None:
                    params["since"] = earliest[0] - timedelta(minutes=rule.minutes + 1)
                if rule.kind == "class":  # only a window that heard the class can open an episode of it
                    params["heard"] = [sensor for sensor, labels in (heard or {}).items() if rule.label in labels]
                rows = conn.execute(query(f"alert_{rule.kind}"), params).fetchall()
                opening = [row for row in rows if row[3]]
                closing = [row for row in rows if not row[3]]
                if opening:
                    changed.update(row[0] for row in conn.execute(_OPEN, {
                        "rule": rule.name, "kind": rule.kind, "sensors": [r[0] for r in opening],
                        "ats": [r[1] for r in opening], "values": [r[2] for r in opening],
                        "details": [r[4] for r in opening],
                    }))  # fmt: skip
                if closing:
                    changed.update(row[0] for row in conn.execute(_CLOSE, {
                        "rule": rule.name, "sensors": [r[0] for r in closing], "ats": [r[1] for r in closing],
                    }))  # fmt: skip
        return changed

    def _params(self, rule: AlertRule, sensors: list[str] | None, now: datetime | None) -> dict[str, Any]:
        if rule.kind == "silent":
            return {"sensors": sensors, "minutes": rule.minutes, "now": now or datetime.now(UTC)}
        return {
            "sensors": sensors, "rule": rule.name, "minutes": rule.minutes, "threshold": rule.threshold,
            "label": rule.label, "tz": self.timezone, "start": rule.start, "stop": rule.end, "since": None,
        }  # fmt: skip

    def states(self, conn: psycopg.Connection[Any], sensors: Sequence[str]) -> list[tuple[str, str]]:
        """(topic, JSON payload) to publish retained for each sensor: its open episodes, [] when none."""
        rows = conn.execute(_STATE, {"sensors": sorted(set(sensors))}).fetchall()
        conn.commit()
        return [(self.topic(sensor), json.dumps({"sensor_id": sensor, "open": episodes})) for sensor, episodes in rows]

    def recent(self, conn: psycopg.Connection[Any], since: datetime) -> list[str]:
        """Sensors with an open episode or one closed after `since`: what a starting ingest republishes, in case the
        one before it died between committing a change and publishing it."""
        sensors = [row[0] for row in conn.execute(_RECENT, {"since": since})]
        conn.commit()
        return sensors
