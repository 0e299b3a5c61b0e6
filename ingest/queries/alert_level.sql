-- Alert rule "level": per sensor, the energy-mean LAeq of the windows that ended in the `minutes` before its latest
-- window end; the rule holds when that is above `threshold`, the windows cover at least 90 per cent of the span, and the
-- latest window end falls in the rule's daily period. Parameters: sensors (text[]), minutes, threshold, tz, start,
-- stop (time or NULL), since: a bound below every window start needed (so planning skips older day partitions).
SELECT s.id AS sensor_id, s.last_seen AS at, w.laeq AS value,
       coalesce(w.laeq > %(threshold)s AND w.covered_s >= 0.9 * 60 * %(minutes)s, false)
           AND ingest_in_period(s.last_seen, %(tz)s, %(start)s, %(stop)s) AS holds,
       format('LAeq,%%smin %%s dB(A) > %%s', %(minutes)s, round(w.laeq::numeric, 1), %(threshold)s) AS detail
  FROM sensors AS s
  LEFT JOIN LATERAL (SELECT 10 * log(avg(power(10, e.laeq / 10))) AS laeq,
                            sum(extract(epoch FROM e.window_end - e.window_start)) AS covered_s
                       FROM events AS e
                      WHERE e.sensor_id = s.id AND e.laeq IS NOT NULL
                        AND e.window_start > %(since)s
                        AND e.window_start > s.last_seen - make_interval(mins => %(minutes)s) - interval '1 minute'
                        AND e.window_end > s.last_seen - make_interval(mins => %(minutes)s)) AS w ON true
 WHERE s.id = ANY(%(sensors)s)
 ORDER BY s.id;  -- one row-lock order for every ingest
