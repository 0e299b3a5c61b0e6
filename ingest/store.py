"""PostgreSQL side of the ingest: one transaction per batch, so a batch is either wholly stored or not at all.

Throughput comes from COPY into a per-connection temporary staging table and one INSERT ... SELECT ... ON CONFLICT DO
NOTHING into the day-partitioned `events`; the same statement's RETURNING (only rows really inserted) feeds the hourly
rollup, so a redelivered event is neither stored nor counted twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta

import psycopg

from .records import EventRow, Rejection, SummaryRow

PARTITION_NAME = re.compile(r"^events_(\d{8})$")
PARTITION_LOCK = 7_215_001  # pg_advisory_xact_lock key: two ingests never create the same partition at once

_CREATE_STAGE = "CREATE TEMPORARY TABLE IF NOT EXISTS stage_raw (payload jsonb) ON COMMIT DELETE ROWS"

# Columns out of validated event JSON (event.schema.json). Fields the schema lets be null or absent (a level that
# could not be computed, `clock` on files classified offline, a top that names no class) become NULL: never an error.
_EXTRACT = """
SELECT (p->>'event_id')::uuid AS event_id, (p->'window'->>'start')::timestamptz AS window_start,
       (p->'window'->>'end')::timestamptz AS window_end, p->>'sensor_id' AS sensor_id,
       (p->>'schema_version')::smallint AS schema_version,
       ingest_text(p->'top'->'name') AS top_class, ingest_num(p->'top'->'score') AS top_score,
       ARRAY(SELECT l->>'name' FROM jsonb_array_elements(p->'labels') AS l
              WHERE jsonb_typeof(l->'name') = 'string') AS labels,
       p->'scores' AS scores,
       CASE WHEN jsonb_typeof(p->'vetoed') = 'array'
            THEN ARRAY(SELECT jsonb_array_elements_text(p->'vetoed')) END AS vetoed,
       ingest_num(p->'level'->'laeq') AS laeq, ingest_num(p->'level'->'lafmax') AS lafmax,
       ingest_num(p->'level'->'lafmin') AS lafmin, ingest_num(p->'level'->'la10') AS la10,
       ingest_num(p->'level'->'la50') AS la50, ingest_num(p->'level'->'la90') AS la90,
       ingest_text(p->'level'->'unit') AS level_unit,
       ingest_bool(p->'clock'->'synced') AS clock_synced, ingest_num(p->'clock'->'max_error_ms') AS clock_max_error_ms,
       ingest_text(p->'model'->'bundle_id') AS bundle_id, ingest_text(p->'model'->'sha256') AS bundle_sha256,
       ingest_num(p->'processing_ms') AS processing_ms,
       ingest_num(p->'location'->'lat') AS lat, ingest_num(p->'location'->'lon') AS lon,
       ingest_text(p->'location'->'name') AS location_name, ingest_text(p->'location'->'street') AS street
  FROM (SELECT payload AS p FROM stage_raw) AS raw
"""


# One statement per batch: columns extracted once (src), new rows inserted, their rollup and the sensors updated.
# ORDER BY keeps row-lock order stable across concurrent ingests.
_INSERT_EVENTS = f"""
WITH src AS MATERIALIZED ({_EXTRACT}
), ins AS (
    INSERT INTO events (event_id, window_start, window_end, sensor_id, schema_version, top_class, top_score,
                        labels, scores, vetoed, laeq, lafmax, lafmin, la10, la50, la90, level_unit, clock_synced,
                        clock_max_error_ms, bundle_id, processing_ms)
    SELECT event_id, window_start, window_end, sensor_id, schema_version, top_class, top_score, labels, scores,
           vetoed, laeq, lafmax, lafmin, la10, la50, la90, level_unit, clock_synced, clock_max_error_ms, bundle_id,
           processing_ms
      FROM src
    ON CONFLICT DO NOTHING
    RETURNING sensor_id, date_trunc('hour', window_start) AS hour_start, top_class, labels, laeq
), per_sensor AS (
    INSERT INTO hourly_sensor AS h (sensor_id, hour_start, events, laeq_n, laeq_energy)
    SELECT sensor_id, hour_start, count(*), count(laeq), coalesce(sum(power(10.0, laeq / 10.0)), 0)
      FROM ins GROUP BY sensor_id, hour_start ORDER BY sensor_id, hour_start
    ON CONFLICT (sensor_id, hour_start) DO UPDATE
       SET events = h.events + excluded.events, laeq_n = h.laeq_n + excluded.laeq_n,
           laeq_energy = h.laeq_energy + excluded.laeq_energy
), per_class AS (
    INSERT INTO hourly_class AS h (sensor_id, hour_start, class, events, top_events)
    SELECT sensor_id, hour_start, class, count(*) FILTER (WHERE labelled), count(*) FILTER (WHERE is_top)
      FROM (SELECT ins.sensor_id, ins.hour_start, c.class, c.class = ANY (ins.labels) AS labelled,
                   c.class IS NOT DISTINCT FROM ins.top_class AS is_top
              FROM ins, LATERAL (SELECT DISTINCT x AS class
                                   FROM unnest(ins.labels || ins.top_class) AS x WHERE x IS NOT NULL) AS c) AS f
     GROUP BY sensor_id, hour_start, class ORDER BY sensor_id, hour_start, class
    ON CONFLICT (sensor_id, hour_start, class) DO UPDATE
       SET events = h.events + excluded.events, top_events = h.top_events + excluded.top_events
), sensors_seen AS (
    INSERT INTO sensors AS s (id, location, name, street, first_seen, last_seen, bundle_id, bundle_sha256)
    SELECT sensor_id,
           CASE WHEN (array_agg(lat ORDER BY window_end DESC))[1] IS NOT NULL
                THEN ST_SetSRID(ST_MakePoint((array_agg(lon ORDER BY window_end DESC))[1],
                                             (array_agg(lat ORDER BY window_end DESC))[1]), 4326) END,
           (array_agg(location_name ORDER BY window_end DESC))[1],
           (array_agg(street ORDER BY window_end DESC))[1],
           min(window_end), max(window_end),
           (array_agg(bundle_id ORDER BY window_end DESC))[1],
           (array_agg(bundle_sha256 ORDER BY window_end DESC))[1]
      FROM src GROUP BY sensor_id ORDER BY sensor_id
    ON CONFLICT (id) DO UPDATE SET
        first_seen = least(s.first_seen, excluded.first_seen),
        last_seen = greatest(s.last_seen, excluded.last_seen),
        location = CASE WHEN excluded.last_seen >= s.last_seen THEN coalesce(excluded.location, s.location)
                        ELSE s.location END,
        name = CASE WHEN excluded.last_seen >= s.last_seen THEN excluded.name ELSE s.name END,
        street = CASE WHEN excluded.last_seen >= s.last_seen THEN excluded.street ELSE s.street END,
        bundle_id = CASE WHEN excluded.last_seen >= s.last_seen THEN excluded.bundle_id ELSE s.bundle_id END,
        bundle_sha256 = CASE WHEN excluded.last_seen >= s.last_seen THEN excluded.bundle_sha256 ELSE s.bundle_sha256 END
)
SELECT count(*) FROM ins
"""


def connect(dsn: str) -> psycopg.Connection:
    """A connection in UTC (hour and day boundaries are UTC everywhere) that fails fast when the server is away."""
    conn = psycopg.connect(dsn, connect_timeout=5, application_name="custom-ingest")
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


def partition_name(day: date) -> str:
    return f"events_{day:%Y%m%d}"


class Store:
    """Writes batches on one connection; the caller owns reconnecting (a new Store per connection)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._days: set[str] = set()
        conn.execute(_CREATE_STAGE)
        conn.commit()

    def ensure_partitions(self, days: Iterable[str]) -> None:
        """Create the day partitions a batch needs (idempotent; serialised across ingests by an advisory lock)."""
        missing = sorted(set(days) - self._days)
        if not missing:
            return
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
            for text in missing:
                day = date.fromisoformat(text)
                self.conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF events "
                    f"FOR VALUES FROM ('{day.isoformat()}') TO ('{(day + timedelta(days=1)).isoformat()}')"
                )
        self._days.update(missing)

    def write(
        self, events: Sequence[EventRow], summaries: Sequence[SummaryRow], rejections: Sequence[Rejection]
    ) -> int:
        """Store one batch in one transaction; returns how many events were new (the rest were duplicates)."""
        self.ensure_partitions(e.day for e in events)
        inserted = 0
        with self.conn.transaction():
            cur = self.conn.cursor()
            if events:
                with cur.copy("COPY stage_raw (payload) FROM STDIN") as copy:
                    for e in events:
                        copy.write_row((e.payload,))
                counted = cur.execute(_INSERT_EVENTS).fetchone()  # the statement always returns one count row
                inserted = counted[0] if counted else 0
            if summaries:
                cur.executemany(
                    "INSERT INTO summaries (sensor_id, period_start, period_end, partial, payload) "
                    "VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
                    [(s.sensor_id, s.period_start, s.period_end, s.partial, s.payload) for s in summaries],
                )
            if rejections:
                cur.executemany(
                    "INSERT INTO rejected (digest, topic, payload, reason) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [(r.digest, r.topic, r.payload, r.reason) for r in rejections],
                )
        return inserted


def drop_old_partitions(conn: psycopg.Connection, keep_days: int, today: date | None = None) -> list[str]:
    """Drop `events` day partitions that end before today - keep_days (UTC); returns the dropped names."""
    today = today or datetime.now(UTC).date()
    cutoff = today - timedelta(days=keep_days)
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events'"
    ).fetchall()
    dropped = []
    for (name,) in rows:
        match = PARTITION_NAME.match(name)
        if match and datetime.strptime(match.group(1), "%Y%m%d").date() < cutoff:
            conn.execute(f"DROP TABLE {name}")
            dropped.append(name)
    conn.commit()
    return sorted(dropped)
