-- Dashboard daily levels of one sensor from the hourly rollup, in local time (tz): Ld 07-19, Le 19-23, Ln 23-07 (the
-- night after a day's evening counts to that day), each the energy mean of its windows' LAeq, and
-- Lden = 10 lg((12 * 10^(Ld/10) + 4 * 10^((Le + 5)/10) + 8 * 10^((Ln + 10)/10)) / 24)  (EU Directive 2002/49/EC);
-- NULL when a period has no window. Parameters: sensor_id, since, until (timestamptz), tz.
SELECT day, round(ld::numeric, 1)::float8 AS ld, round(le::numeric, 1)::float8 AS le,
       round(ln::numeric, 1)::float8 AS ln,
       round((10 * log((12 * power(10, ld / 10) + 4 * power(10, (le + 5) / 10) + 8 * power(10, (ln + 10) / 10)) / 24))
             ::numeric, 1)::float8 AS lden,
       hours
  FROM (SELECT day,
               10 * log(sum(energy) FILTER (WHERE hour BETWEEN 7 AND 18)
                        / nullif(sum(n) FILTER (WHERE hour BETWEEN 7 AND 18), 0)) AS ld,
               10 * log(sum(energy) FILTER (WHERE hour BETWEEN 19 AND 22)
                        / nullif(sum(n) FILTER (WHERE hour BETWEEN 19 AND 22), 0)) AS le,
               10 * log(sum(energy) FILTER (WHERE hour >= 23 OR hour < 7)
                        / nullif(sum(n) FILTER (WHERE hour >= 23 OR hour < 7), 0)) AS ln,
               count(*) AS hours
          FROM (SELECT ((hour_start AT TIME ZONE %(tz)s) - interval '7 hours')::date AS day,
                       extract(hour FROM hour_start AT TIME ZONE %(tz)s) AS hour,
                       laeq_energy AS energy, laeq_n AS n
                  FROM hourly_sensor
                 WHERE sensor_id = %(sensor_id)s AND hour_start >= %(since)s AND hour_start < %(until)s
                   AND laeq_n > 0) AS h
         GROUP BY day) AS d
 ORDER BY day;
