-- Events per class per hour for one sensor: windows in which the class was heard (score >= its threshold).
-- Parameters: sensor_id, since, until (timestamps; hours are UTC).
SELECT hour_start, class, events
  FROM hourly_class
 WHERE sensor_id = %(sensor_id)s
   AND hour_start >= %(since)s AND hour_start < %(until)s
   AND events > 0
 ORDER BY hour_start, class;
