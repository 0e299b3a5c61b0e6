-- Dashboard heatmap of one sensor: windows in which each class was heard, by local hour of the day (time zone tz),
-- summed over the span, from the hourly rollup. Parameters: sensor_id, since, until (timestamptz), tz.
SELECT class, extract(hour FROM hour_start AT TIME ZONE %(tz)s)::integer AS hour, sum(events)::integer AS events
  FROM hourly_class
 WHERE sensor_id = %(sensor_id)s AND hour_start >= %(since)s AND hour_start < %(until)s AND events > 0
 GROUP BY class, hour
 ORDER BY class, hour;
