-- Alert rule "class": per sensor, the windows labelled `label` among those that ended in the `minutes` before its
-- latest window end; the rule holds when they are more than `threshold` and the latest window end falls in the rule's
-- daily period. Evaluated for the sensors of a batch that heard the class, and those with an episode of the rule
-- open. Parameters: sensors, heard (text[]), rule, label, minutes, threshold, tz, start, stop (time or NULL), since:
-- a bound below every window start needed (so planning skips older day partitions).
SELECT s.id AS sensor_id, s.last_seen AS at, c.windows::double precision AS value,
       c.windows > %(threshold)s AND ingest_in_period(s.last_seen, %(tz)s, %(start)s, %(stop)s) AS holds,
       format('%%s heard in %%s windows in %%s min (> %%s)', %(label)s, c.windows, %(minutes)s, %(threshold)s) AS detail
  FROM sensors AS s
  CROSS JOIN LATERAL (SELECT count(*) AS windows
                        FROM events AS e
                       WHERE e.sensor_id = s.id AND %(label)s = ANY (e.labels)  -- per sensor: its index, not the GIN
                         AND e.window_start > %(since)s
                         AND e.window_start > s.last_seen - make_interval(mins => %(minutes)s) - interval '1 minute'
                         AND e.window_end > s.last_seen - make_interval(mins => %(minutes)s)) AS c
 WHERE s.id = ANY(%(sensors)s)
   AND (s.id = ANY(%(heard)s)  -- a batch without the class cannot open an episode; it can close an open one
        OR EXISTS (SELECT FROM alerts AS a WHERE a.sensor_id = s.id AND a.rule = %(rule)s AND a.closed_at IS NULL))
 ORDER BY s.id;  -- one row-lock order for every ingest
