-- Strata's sample dataset: one hour of CPU metrics for six hosts in two
-- regions, one point every 10 seconds (2,160 rows), starting 2025-01-01.
-- Safe to run twice: the table is OVERWRITE, so a rerun rewrites the same
-- rows instead of adding more.

CREATE DATABASE IF NOT EXISTS demo;

CREATE TABLE IF NOT EXISTS demo.cpu (
    host         STRING TAG,
    region       STRING TAG,
    ts           TIMESTAMP NOT NULL,
    usage_user   DOUBLE,
    usage_system DOUBLE,
    TIMESTAMP KEY(ts)
) ENGINE=Analytic WITH (segment_duration = '2h');

INSERT INTO demo.cpu (host, region, ts, usage_user, usage_system)
SELECT
    'host-' || CAST(h.value AS VARCHAR),
    CASE WHEN h.value < 3 THEN 'eu-west' ELSE 'us-east' END,
    to_timestamp_millis(1735689600000 + t.value * 10000),
    round(50 + 30 * sin(t.value / 40.0 + h.value), 2),
    round(10 + 5 * cos(t.value / 25.0 + h.value), 2)
FROM generate_series(0, 5) AS h, generate_series(0, 359) AS t;
