"""The TSBS cpu-only query set, in SQL, run against Strata (over its
PostgreSQL protocol), and against DuckDB and DataFusion (Python) on the same
rows in Parquet.

Every query runs `--runs` times after one warm-up run, and its rows must match
DuckDB's, the reference. Floats are compared after rounding to 6 places, and
timestamps by value. Prints one JSON object per query and engine (mean,
median and p99 ms, rows, whether they match).

Each engine runs the same SQL, with one exception, as TSBS itself writes each
query in each engine's own dialect: Strata answers `lastpoint` from its
last-value cache, `last_values('cpu')`. `lastpoint-join` is the portable
form, the same SQL in every engine.

Usage: queries.py --pg-port P --db DB --parquet FILE --start RFC3339
                  --duration-s S --scale N [--runs R]
"""

import argparse
import datetime
import json
import statistics
import sys
import time

import datafusion
import duckdb
import psycopg
import pyarrow as pa

TAGS = [
    "hostname", "region", "datacenter", "rack", "os", "arch", "team", "service",
    "service_version", "service_environment",
]
FIELDS = [
    "usage_user", "usage_system", "usage_idle", "usage_nice", "usage_iowait",
    "usage_irq", "usage_softirq", "usage_steal", "usage_guest", "usage_guest_nice",
]


def ts(t):
    return "TIMESTAMP '" + t.strftime("%Y-%m-%d %H:%M:%S") + "'"


def queries(start, duration_s, scale):
    """TSBS's query types with fixed (deterministic) hosts and windows. A
    window longer than the dataset covers all of it."""
    end = start + datetime.timedelta(seconds=duration_s)

    def window(hours):
        return start, min(end, start + datetime.timedelta(hours=hours))

    def hosts(n):
        step = max(1, scale // n)
        names = ", ".join(f"'host_{(i * step) % scale}'" for i in range(n))
        return f"hostname IN ({names})"

    def where(hours, n_hosts=None):
        a, b = window(hours)
        cond = f'"timestamp" >= {ts(a)} AND "timestamp" < {ts(b)}'
        if n_hosts:
            cond += " AND " + hosts(n_hosts)
        return cond

    def maxes(n):
        return ", ".join(f"max({f}) AS max_{f}" for f in FIELDS[:n])

    def avgs(n):
        return ", ".join(f"avg({f}) AS avg_{f}" for f in FIELDS[:n])

    cols = ", ".join(['"timestamp"'] + TAGS + FIELDS)
    c_cols = ", ".join(['c."timestamp"'] + [f"c.{c}" for c in TAGS + FIELDS])
    q = {}
    for metrics, nhosts, hours in [(1, 1, 1), (1, 1, 12), (1, 8, 1), (5, 1, 1), (5, 1, 12), (5, 8, 1)]:
        q[f"single-groupby-{metrics}-{nhosts}-{hours}"] = (
            f"SELECT date_trunc('minute', \"timestamp\") AS minute, {maxes(metrics)} "
            f"FROM cpu WHERE {where(hours, nhosts)} GROUP BY 1 ORDER BY 1"
        )
    for nhosts in [1, 8]:
        q[f"cpu-max-all-{nhosts}"] = (
            f"SELECT date_trunc('hour', \"timestamp\") AS hour, {maxes(10)} "
            f"FROM cpu WHERE {where(8, nhosts)} GROUP BY 1 ORDER BY 1"
        )
    for name, n in [("1", 1), ("5", 5), ("all", 10)]:
        q[f"double-groupby-{name}"] = (
            f"SELECT date_trunc('hour', \"timestamp\") AS hour, hostname, {avgs(n)} "
            f"FROM cpu WHERE {where(12)} GROUP BY 1, 2 ORDER BY 1, 2"
        )
    q["high-cpu-1"] = (
        f"SELECT {cols} FROM cpu WHERE usage_user > 90.0 AND {where(12, 1)} "
        f"ORDER BY \"timestamp\", hostname"
    )
    q["high-cpu-all"] = (
        f"SELECT {cols} FROM cpu WHERE usage_user > 90.0 AND {where(12)} "
        f"ORDER BY \"timestamp\", hostname"
    )
    q["lastpoint-join"] = (
        f"SELECT {c_cols} FROM cpu c JOIN (SELECT hostname, max(\"timestamp\") AS t FROM cpu "
        "GROUP BY hostname) m ON c.hostname = m.hostname AND c.\"timestamp\" = m.t "
        "ORDER BY c.hostname"
    )
    q["groupby-orderby-limit"] = (
        f"SELECT date_trunc('minute', \"timestamp\") AS minute, max(usage_user) AS max_usage_user "
        f"FROM cpu WHERE \"timestamp\" < {ts(end)} GROUP BY 1 ORDER BY 1 DESC LIMIT 5"
    )
    # Strata's form of lastpoint; the reference runs the join.
    q["lastpoint"] = q["lastpoint-join"]
    return q


def strata_sql(name, sql):
    """Strata's dialect of a query, where it has one."""
    if name == "lastpoint":
        cols = ", ".join(['"timestamp"'] + TAGS + FIELDS)
        return f"SELECT {cols} FROM last_values('cpu') ORDER BY hostname"
    return sql


def norm(rows):
    def cell(v):
        if isinstance(v, float):
            return round(v, 6)
        if isinstance(v, datetime.datetime):
            return v.replace(tzinfo=None).isoformat()
        if hasattr(v, "is_finite"):  # Decimal
            return round(float(v), 6)
        return v

    return sorted(tuple(cell(c) for c in r) for r in rows)


def timed(run, runs):
    run()  # warm-up
    times = []
    rows = None
    for _ in range(runs):
        t = time.perf_counter()
        rows = run()
        times.append((time.perf_counter() - t) * 1000.0)
    times.sort()
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return rows, statistics.mean(times), statistics.median(times), p99


def print_result(engine, query, timing, rows, matches, **extra):
    """One JSON line per query and engine, as every runner prints it."""
    mean, med, p99 = timing
    print(json.dumps({
        "engine": engine, "query": query, **extra, "mean_ms": round(mean, 2),
        "median_ms": round(med, 2), "p99_ms": round(p99, 2), "rows": rows,
        "matches_reference": matches,
    }), flush=True)


def dataset_args(ap):
    """The arguments every query runner takes: the dataset and the runs."""
    ap.add_argument("--db", required=True)
    ap.add_argument("--parquet", required=True)
    ap.add_argument("--start", required=True)
    ap.add_argument("--duration-s", type=int, required=True)
    ap.add_argument("--scale", type=int, required=True)
    ap.add_argument("--runs", type=int, default=10)


def start_of(args):
    return datetime.datetime.fromisoformat(args.start.replace("Z", "+00:00")).replace(tzinfo=None)


def duckdb_over(parquet):
    """The reference: DuckDB on 2 threads, with the Parquet file as `cpu`."""
    duck = duckdb.connect()
    duck.execute("SET threads TO 2")
    duck.execute(f"CREATE VIEW cpu AS SELECT * FROM read_parquet('{parquet}')")
    return duck


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg-port", type=int, required=True)
    dataset_args(ap)
    args = ap.parse_args()
    start = start_of(args)

    duck = duckdb_over(args.parquet)
    pg = psycopg.connect(f"host=127.0.0.1 port={args.pg_port} dbname={args.db} user=bench", autocommit=True)
    fusion = datafusion.SessionContext(datafusion.SessionConfig().with_target_partitions(2))
    fusion.register_parquet("cpu", args.parquet)

    def fusion_rows(sql):
        batches = fusion.sql(sql).collect()
        if not batches:
            return []
        return [tuple(r.values()) for r in pa.Table.from_batches(batches).to_pylist()]

    failures = 0
    for name, sql in queries(start, args.duration_s, args.scale).items():
        ref, *duck_t = timed(lambda: duck.execute(sql).fetchall(), args.runs)
        results = [("duckdb", ref, duck_t)]
        own = strata_sql(name, sql)
        got, *t = timed(lambda: pg.execute(own).fetchall(), args.runs)
        results.append(("strata", got, t))
        if name != "lastpoint":  # the same SQL as lastpoint-join
            got, *t = timed(lambda: fusion_rows(sql), args.runs)
            results.append(("datafusion", got, t))
        for engine, rows, timing in results:
            same = norm(rows) == norm(ref)
            if not same:
                failures += 1
                print(f"MISMATCH {name}: {engine} {len(rows)} rows, duckdb {len(ref)} rows\n{sql}", file=sys.stderr)
            print_result(engine, name, timing, len(rows), same)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
