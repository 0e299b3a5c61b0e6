-- Dashboard alerts: episodes still open or opened in the span, newest first; one sensor's or all (sensor_id NULL).
-- Parameters: sensor_id (text or NULL), since, until (timestamptz), limit.
SELECT id, rule, kind, sensor_id, opened_at, closed_at, value, detail
  FROM alerts
 WHERE (%(sensor_id)s::text IS NULL OR sensor_id = %(sensor_id)s)
   AND (closed_at IS NULL OR (opened_at < %(until)s AND closed_at >= %(since)s))
 ORDER BY opened_at DESC, id DESC
 LIMIT %(limit)s;
