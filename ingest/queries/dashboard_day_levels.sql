-- Dashboard map colours: every sensor's Ld, Le, Ln and Lden of one day in local time (tz), the day running 07:00 to
-- 07:00 as in dashboard_lden.sql, from the hourly rollup; NULL where a period has no window. Parameters: day, tz.
SELECT sensor_id, %(day)s::date AS day, round(ld::numeric, 1)::float8 AS ld, round(le::numeric, 1)::float8 AS le,
       round(ln::numeric, 1)::float8 AS ln,
       round((10 * log((12 * power(10, ld / 10) + 4 * power(10, (le + 5) / 10) + 8 * power(10, (ln + 10) / 10)) / 24))
             ::numeric, 1)::float8 AS lden
  FROM (SELECT sensor_id,
               10 * log(sum(energy) FILTER (WHERE hour BETWEEN 7 AND 18)
                        / nullif(sum(n) FILTER (WHERE hour BETWEEN 7 AND 18), 0)) AS ld,
               10 * log(sum(energy) FILTER (WHERE hour BETWEEN 19 AND 22)
                        / nullif(sum(n) FILTER (WHERE hour BETWEEN 19 AND 22), 0)) AS le,
               10 * log(sum(energy) FILTER (WHERE hour >= 23 OR hour < 7)
                        / nullif(sum(n) FILTER (WHERE hour >= 23 OR hour < 7), 0)) AS ln
          FROM (SELECT sensor_id, extract(hour FROM hour_start AT TIME ZONE %(tz)s) AS hour,
                       laeq_energy AS energy, laeq_n AS n
                  FROM hourly_sensor
                 WHERE hour_start >= (%(day)s::date + time '07:00') AT TIME ZONE %(tz)s
                   AND hour_start < (%(day)s::date + 1 + time '07:00') AT TIME ZONE %(tz)s
                   AND laeq_n > 0) AS h
         GROUP BY sensor_id) AS d
 ORDER BY sensor_id;
