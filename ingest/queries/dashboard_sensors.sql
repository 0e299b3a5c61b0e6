-- Dashboard map: every located sensor with its latest window's LAeq, the latest hour's top class (most often on top),
-- silent when its latest window ended more than `silent_s` seconds before `now`, and its open alerts.
-- Parameters: now (timestamptz), silent_s (seconds).
SELECT s.id AS sensor_id, s.name, s.street, ST_Y(s.location) AS lat, ST_X(s.location) AS lon, s.last_seen,
       round(w.laeq::numeric, 1)::float8 AS laeq, c.class AS top_class,
       s.last_seen < %(now)s - make_interval(secs => %(silent_s)s) AS silent,
       (SELECT count(*) FROM alerts AS a WHERE a.sensor_id = s.id AND a.closed_at IS NULL) AS open_alerts
  FROM sensors AS s
  LEFT JOIN LATERAL (SELECT laeq FROM events AS e
                      WHERE e.sensor_id = s.id AND e.window_start >= s.last_seen - interval '1 minute'
                      ORDER BY e.window_start DESC LIMIT 1) AS w ON true
  LEFT JOIN LATERAL (SELECT class FROM hourly_class AS h
                      WHERE h.sensor_id = s.id AND h.hour_start = date_trunc('hour', s.last_seen - interval '1 ms')
                        AND h.top_events > 0
                      ORDER BY h.top_events DESC, h.class LIMIT 1) AS c ON true
 WHERE s.location IS NOT NULL
 ORDER BY s.id;
