-- 002: exceedance alerts (one row per episode) and the read-only role of `custom-ingest serve`.

-- One row per alert episode: opened when a rule's condition starts to hold for a sensor, closed when it stops.
-- At most one open episode per rule and sensor (partial unique index), and an episode is identified by its opening
-- time, which comes from the data (the window end where the condition first held, or last_seen + the silence limit):
-- an ingest restarted, or two ingests evaluating the same sensor, re-derive the same row and ON CONFLICT drops it.
CREATE TABLE alerts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule       text        NOT NULL,           -- the rule's name in the ingest config
    kind       text        NOT NULL,           -- level | class | silent
    sensor_id  text        NOT NULL,
    opened_at  timestamptz NOT NULL,
    closed_at  timestamptz,                    -- NULL while the episode is open
    value      double precision,               -- the figure that opened it: dB(A), windows heard, minutes silent
    detail     text        NOT NULL,           -- one line for people: "LAeq,5min 71.2 dB(A) > 65"
    raised_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (rule, sensor_id, opened_at)
);
CREATE UNIQUE INDEX alerts_one_open ON alerts (sensor_id, rule) WHERE closed_at IS NULL;  -- also: a sensor's open ones
CREATE INDEX alerts_opened ON alerts (opened_at DESC);

-- The dashboard reads; it never writes. `custom_reader` may SELECT and nothing else; give the dashboard a login role
-- in it (ingest/README.md) and `custom-ingest serve` also runs every transaction READ ONLY. A role belongs to the
-- whole cluster: create it once (a concurrent migration of another database may win the race: that is fine).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'custom_reader') THEN
        CREATE ROLE custom_reader NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT USAGE ON SCHEMA public TO custom_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO custom_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO custom_reader;

-- Is `t`, in time zone `tz`, inside the daily period [start, stop)? A period may wrap midnight (23:00-07:00); no
-- period (NULL start) is all day. Used by alert rules with `between`.
CREATE FUNCTION ingest_in_period(t timestamptz, tz text, start time, stop time) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT CASE WHEN start IS NULL THEN true
               WHEN start < stop THEN (t AT TIME ZONE tz)::time >= start AND (t AT TIME ZONE tz)::time < stop
               ELSE (t AT TIME ZONE tz)::time >= start OR (t AT TIME ZONE tz)::time < stop END $$;
