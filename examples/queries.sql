-- Queries to try on the sample dataset (scripts/quickstart loads it).

-- Average user CPU per region, in 5-minute buckets.
SELECT date_bin(INTERVAL '5 minutes', ts) AS bucket, region, round(avg(usage_user), 2) AS avg_user
FROM demo.cpu GROUP BY bucket, region ORDER BY bucket, region LIMIT 6;

-- The latest reading of every host.
SELECT host, last_value(usage_user ORDER BY ts) AS latest, max(ts) AS at
FROM demo.cpu GROUP BY host ORDER BY host;

-- The busiest minutes.
SELECT date_bin(INTERVAL '1 minute', ts) AS minute, max(usage_user + usage_system) AS peak
FROM demo.cpu GROUP BY minute ORDER BY peak DESC LIMIT 3;
