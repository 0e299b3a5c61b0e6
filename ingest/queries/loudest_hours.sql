-- The loudest hours across the fleet: energy-averaged LAeq per sensor-hour, loudest first.
-- Parameters: since (timestamp), limit (rows).
SELECT sensor_id, hour_start, round(laeq::numeric, 1) AS laeq, events
  FROM hourly
 WHERE laeq IS NOT NULL AND hour_start >= %(since)s
 ORDER BY laeq DESC, sensor_id, hour_start
 LIMIT %(limit)s;
