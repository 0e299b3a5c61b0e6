-- Alert rule "silent": a sensor with no window ending in the last `minutes`. An episode opens at last_seen + minutes
-- (from the data, so every ingest derives the same opening) and closes when an event arrives. Parameters: sensors
-- (text[], or NULL for every sensor), minutes, now (timestamptz).
SELECT id AS sensor_id,
       CASE WHEN last_seen < %(now)s - make_interval(mins => %(minutes)s)
            THEN last_seen + make_interval(mins => %(minutes)s) ELSE %(now)s END AS at,
       round(extract(epoch FROM %(now)s - last_seen) / 60, 1)::double precision AS value,
       last_seen < %(now)s - make_interval(mins => %(minutes)s) AS holds,
       format('no event for %%s min (last %%s)', round(extract(epoch FROM %(now)s - last_seen) / 60),
              to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS"Z"')) AS detail
  FROM sensors
 WHERE %(sensors)s::text[] IS NULL OR id = ANY(%(sensors)s)
 ORDER BY id;  -- one row-lock order for every ingest
