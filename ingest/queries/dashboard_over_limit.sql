-- Hours over the limit of a level rule: per sensor (one, or all when sensor_id is NULL), the hours in the span whose
-- energy-mean LAeq is above `threshold`, counting only hours that start in the rule's daily period (start..stop in
-- local time tz; NULL: all day), and the hours measured there. From the hourly rollup.
-- Parameters: sensor_id (text or NULL), since, until (timestamptz), threshold, tz, start, stop (time or NULL).
SELECT s.id AS sensor_id,
       count(h.hour_start) FILTER (WHERE 10 * log(h.laeq_energy / h.laeq_n) > %(threshold)s) AS hours_over,
       count(h.hour_start) AS hours_measured
  FROM sensors AS s
  LEFT JOIN hourly_sensor AS h
         ON h.sensor_id = s.id AND h.hour_start >= %(since)s AND h.hour_start < %(until)s AND h.laeq_n > 0
        AND ingest_in_period(h.hour_start, %(tz)s, %(start)s, %(stop)s)
 WHERE %(sensor_id)s::text IS NULL OR s.id = %(sensor_id)s
 GROUP BY s.id
 ORDER BY s.id;
