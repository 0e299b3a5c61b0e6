-- Hourly summaries, one row per sensor-hour, with an hour sent in parts put back together: a sensor stopped mid-hour
-- sends a partial summary, and once restarted another for the rest of the hour, both with the hour as period start.
-- Windows and minutes covered add up; LAeq is the energy mean of the parts' LAeq weighted by minutes covered; LAFmax
-- the highest. Parameters: sensor_id, since, until (timestamps; hours are UTC).
SELECT sensor_id, period_start AS hour_start, count(*) AS parts,
       sum(minutes) AS minutes_covered, sum(windows) AS windows,
       round((10 * log(sum(minutes * power(10, laeq / 10)) FILTER (WHERE laeq IS NOT NULL)
                       / nullif(sum(minutes) FILTER (WHERE laeq IS NOT NULL), 0)))::numeric, 1) AS laeq,
       max(lafmax) AS lafmax, sum(unsynced) AS unsynced_windows
  FROM (SELECT sensor_id, period_start, (payload->>'minutes_covered')::numeric AS minutes,
               (payload->>'windows')::integer AS windows, (payload->'level'->>'laeq')::double precision AS laeq,
               (payload->'level'->>'lafmax')::double precision AS lafmax,
               (payload->'clock'->>'unsynced_windows')::integer AS unsynced
          FROM summaries
         WHERE sensor_id = %(sensor_id)s
           AND period_start >= %(since)s AND period_start < %(until)s) AS part
 GROUP BY sensor_id, period_start
 ORDER BY period_start;
