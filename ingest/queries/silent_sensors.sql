-- Dead sensors: no event for more than 10 minutes (by window end), longest silent first.
-- Parameters: at (timestamp to ask about; NULL = now).
SELECT id AS sensor_id, last_seen, coalesce(%(at)s::timestamptz, now()) - last_seen AS silent_for
  FROM sensors
 WHERE last_seen < coalesce(%(at)s::timestamptz, now()) - interval '10 minutes'
 ORDER BY last_seen, id;
