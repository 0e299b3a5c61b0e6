-- Dashboard time series and class timeline of one sensor: every window's levels, top class, labels and what the
-- sensor's veto scaled down (vetoed: NULL when the event had none).
-- Parameters: sensor_id, since, until (timestamptz; the serve caps the span).
SELECT window_start, window_end, laeq, lafmax, la90, top_class, labels, vetoed, clock_synced
  FROM events
 WHERE sensor_id = %(sensor_id)s AND window_start >= %(since)s AND window_start < %(until)s
 ORDER BY window_start;
