-- 001: sensors, day-partitioned events, rejected messages, hourly summaries and the hourly rollup.
-- Applied once, in a transaction, by `custom-ingest migrate` (schema_migrations records it).
CREATE EXTENSION IF NOT EXISTS postgis;

-- A JSON value as a column only when it has the expected type (NULL otherwise): used by the ingest to pull columns
-- out of events without ever failing on a field a newer sensor sends differently.
CREATE FUNCTION ingest_num(j jsonb) RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
    $$ SELECT CASE WHEN jsonb_typeof(j) = 'number' THEN (j #>> '{}')::double precision END $$;
CREATE FUNCTION ingest_text(j jsonb) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
    $$ SELECT CASE WHEN jsonb_typeof(j) = 'string' THEN j #>> '{}' END $$;
CREATE FUNCTION ingest_bool(j jsonb) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
    $$ SELECT CASE WHEN jsonb_typeof(j) = 'boolean' THEN (j #>> '{}')::boolean END $$;

CREATE TABLE sensors (
    id          text PRIMARY KEY,
    location    geometry(Point, 4326),          -- NULL when an event carried no lat/lon
    name        text,
    street      text,
    first_seen  timestamptz NOT NULL,           -- window end of the first event stored
    last_seen   timestamptz NOT NULL,           -- window end of the latest event stored
    bundle_id   text,
    bundle_sha256 text
);
CREATE INDEX sensors_location_gist ON sensors USING gist (location);

-- One row per window event. Partitioned by day on window start so retention is a DROP TABLE, not a DELETE.
-- The key has to contain the partition column: a redelivered event carries the same window start, so
-- (event_id, window_start) is as unique as event_id alone and ON CONFLICT DO NOTHING drops every duplicate.
CREATE TABLE events (
    event_id       uuid        NOT NULL,
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL,
    sensor_id      text        NOT NULL,
    schema_version smallint    NOT NULL,
    top_class      text,                       -- NULL when the event's top names no class (nothing heard)
    top_score      real,
    labels         text[]      NOT NULL,       -- classes at or above their threshold: "was a siren heard"
    scores         jsonb       NOT NULL,       -- every class with its score: {"Siren": 0.91, ...}
    laeq           real,                       -- levels (event `level`): NULL where the sensor sent null
    lafmax         real,
    lafmin         real,
    la10           real,
    la50           real,
    la90           real,
    level_unit     text,
    clock_synced   boolean,                    -- event `clock.synced`: NULL when not sent or not known
    clock_max_error_ms real,
    bundle_id      text,
    processing_ms  real,
    ingested_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (event_id, window_start)
) PARTITION BY RANGE (window_start);
CREATE INDEX events_sensor_start ON events (sensor_id, window_start);
CREATE INDEX events_labels_gin ON events USING gin (labels);

-- Messages that were not JSON or failed the schema: kept (truncated) with the reason, acknowledged, never retried.
CREATE TABLE rejected (
    digest      text PRIMARY KEY,               -- md5 of topic + payload: a redelivered bad message is stored once
    topic       text NOT NULL,
    payload     text NOT NULL,                  -- first 4 KiB, as text with invalid UTF-8 replaced
    reason      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Summaries published by sensors on <prefix>/<sensor_id>/summary, kept as sent. An hour can come in parts: a sensor
-- stopped mid-hour sends a partial summary (period start = the hour, end = the stop) and, once restarted, another for
-- the rest of the hour with the same period start. The period end tells the parts apart; a redelivered copy repeats
-- all three key columns and is dropped by ON CONFLICT DO NOTHING.
CREATE TABLE summaries (
    sensor_id    text        NOT NULL,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    partial      boolean     NOT NULL,
    payload      jsonb       NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sensor_id, period_start, period_end)
);

-- Hourly rollup maintained by the ingest in the same transaction as the events it counts (only rows that were
-- really inserted are counted, so redelivery never counts twice). Levels are energy-averaged:
-- LAeq(hour) = 10 log10(laeq_energy / laeq_n), with laeq_energy = sum 10^(LAeq/10) over the hour's windows.
CREATE TABLE hourly_sensor (
    sensor_id   text        NOT NULL,
    hour_start  timestamptz NOT NULL,
    events      integer     NOT NULL,
    laeq_n      integer     NOT NULL,
    laeq_energy double precision NOT NULL,
    PRIMARY KEY (sensor_id, hour_start)
);
CREATE TABLE hourly_class (
    sensor_id   text        NOT NULL,
    hour_start  timestamptz NOT NULL,
    class       text        NOT NULL,
    events      integer     NOT NULL,           -- windows in which the class was labelled (score >= threshold)
    top_events  integer     NOT NULL,           -- windows in which it was the top class
    PRIMARY KEY (sensor_id, hour_start, class)
);
CREATE VIEW hourly AS
SELECT sensor_id, hour_start, events,
       CASE WHEN laeq_n > 0 THEN 10 * log(laeq_energy / laeq_n) END AS laeq
  FROM hourly_sensor;
