-- Dashboard time series and class timeline of one sensor: every window's levels, top class and labels.
-- Parameters: sensor_id, since, until (timestamptz; the serve caps the span).
SELECT window_start, window_end, laeq, lafmax, la90, top_class, labels, clock_synced
  FROM events
 WHERE sensor_id = %(sensor_id)s AND window_start >= %(since)s AND window_start < %(until)s
 ORDER BY window_start;
