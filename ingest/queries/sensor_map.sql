-- A GeoJSON FeatureCollection for any map: every located sensor with its latest hour's top class and LAeq.
-- "Top class" is the class most often on top of the hour's windows. No parameters.
SELECT json_build_object(
           'type', 'FeatureCollection',
           'features', coalesce(json_agg(feature ORDER BY sensor_id), '[]'::json)) AS geojson
  FROM (SELECT s.id AS sensor_id,
               json_build_object(
                   'type', 'Feature',
                   'geometry', ST_AsGeoJSON(s.location)::json,
                   'properties', json_build_object(
                       'sensor_id', s.id, 'name', s.name, 'last_seen', s.last_seen,
                       'hour_start', h.hour_start, 'top_class', c.class,
                       'laeq', round(h.laeq::numeric, 1))) AS feature
          FROM sensors AS s
          LEFT JOIN LATERAL (SELECT hour_start, laeq FROM hourly
                              WHERE sensor_id = s.id ORDER BY hour_start DESC LIMIT 1) AS h ON true
          LEFT JOIN LATERAL (SELECT class FROM hourly_class
                              WHERE sensor_id = s.id AND hour_start = h.hour_start AND top_events > 0
                              ORDER BY top_events DESC, class LIMIT 1) AS c ON true
         WHERE s.location IS NOT NULL) AS features;
