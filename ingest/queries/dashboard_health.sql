-- Dashboard health of one sensor: first/last seen, bundle, share of windows on a synced clock and the largest clock
-- error over the span, and the unmeasured minutes (microphone down or daemon stopped) of its latest whole summarised
-- hour: 60 - the minutes covered by all its parts.
-- Parameters: sensor_id, since, until (timestamptz).
SELECT s.id AS sensor_id, s.first_seen, s.last_seen, s.bundle_id,
       e.windows, e.synced_share, e.max_clock_error_ms,
       m.period_start AS summary_hour, m.mic_down_min
  FROM sensors AS s
  CROSS JOIN LATERAL (SELECT count(*) AS windows,
                             round(avg(CASE WHEN clock_synced THEN 1.0 ELSE 0.0 END)
                                   FILTER (WHERE clock_synced IS NOT NULL), 3)::float8 AS synced_share,
                             max(clock_max_error_ms)::float8 AS max_clock_error_ms
                        FROM events
                       WHERE sensor_id = s.id AND window_start >= %(since)s AND window_start < %(until)s) AS e
  LEFT JOIN LATERAL (SELECT period_start,
                            round(60 - sum((payload->>'minutes_covered')::numeric), 1)::float8 AS mic_down_min
                       FROM summaries
                      WHERE sensor_id = s.id
                        AND period_start = (SELECT max(period_start) FROM summaries
                                             WHERE sensor_id = s.id AND NOT partial)
                      GROUP BY period_start) AS m ON true
 WHERE s.id = %(sensor_id)s;
