"""The TSBS cpu-only queries in InfluxQL, timed on InfluxDB 1.x over HTTP,
for the queries InfluxQL can express (TSBS's own InfluxQL forms, with
fill(none) so that empty buckets are not rows). Each answer's row count must
equal DuckDB's for the same query in SQL. Prints one JSON object per query.

Usage: influxql.py --url http://127.0.0.1:PORT --db DB --parquet FILE
                   --start RFC3339 --duration-s S --scale N [--runs R]
"""

import argparse
import datetime
import json
import sys
import urllib.parse
import urllib.request

import queries as sql_queries


def rfc(t):
    return "'" + t.strftime("%Y-%m-%dT%H:%M:%SZ") + "'"


def influxql(start, duration_s, scale):
    end = start + datetime.timedelta(seconds=duration_s)

    def window(hours):
        b = min(end, start + datetime.timedelta(hours=hours))
        return f"time >= {rfc(start)} AND time < {rfc(b)}"

    def hosts(n):
        step = max(1, scale // n)
        return "(" + " OR ".join(f"hostname = 'host_{(i * step) % scale}'" for i in range(n)) + ")"

    def maxes(n):
        return ", ".join(f"max({f})" for f in sql_queries.FIELDS[:n])

    def means(n):
        return ", ".join(f"mean({f})" for f in sql_queries.FIELDS[:n])

    q = {}
    for metrics, nhosts, hours in [(1, 1, 1), (1, 1, 12), (1, 8, 1), (5, 1, 1), (5, 1, 12), (5, 8, 1)]:
        q[f"single-groupby-{metrics}-{nhosts}-{hours}"] = (
            f"SELECT {maxes(metrics)} FROM cpu WHERE {hosts(nhosts)} AND {window(hours)} "
            "GROUP BY time(1m) fill(none)"
        )
    for nhosts in [1, 8]:
        q[f"cpu-max-all-{nhosts}"] = (
            f"SELECT {maxes(10)} FROM cpu WHERE {hosts(nhosts)} AND {window(8)} GROUP BY time(1h) fill(none)"
        )
    for name, n in [("1", 1), ("5", 5), ("all", 10)]:
        q[f"double-groupby-{name}"] = (
            f"SELECT {means(n)} FROM cpu WHERE {window(12)} GROUP BY time(1h), hostname fill(none)"
        )
    q["high-cpu-1"] = f"SELECT * FROM cpu WHERE usage_user > 90.0 AND {hosts(1)} AND {window(12)}"
    q["high-cpu-all"] = f"SELECT * FROM cpu WHERE usage_user > 90.0 AND {window(12)}"
    q["lastpoint"] = "SELECT last(*) FROM cpu GROUP BY hostname"
    q["groupby-orderby-limit"] = (
        f"SELECT max(usage_user) FROM cpu WHERE time < {rfc(end)} GROUP BY time(1m) fill(none) "
        "ORDER BY time DESC LIMIT 5"
    )
    return q


def rows_of(url, db, q):
    u = f"{url}/query?" + urllib.parse.urlencode({"db": db, "q": q, "epoch": "ms"})
    body = json.load(urllib.request.urlopen(u))
    result = body["results"][0]
    if "error" in result:
        raise RuntimeError(result["error"])
    return sum(len(s["values"]) for s in result.get("series", []))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    sql_queries.dataset_args(ap)
    a = ap.parse_args()
    start = sql_queries.start_of(a)
    duck = sql_queries.duckdb_over(a.parquet)
    reference = sql_queries.queries(start, a.duration_s, a.scale)
    failures = 0
    for name, q in influxql(start, a.duration_s, a.scale).items():
        want = len(duck.execute(reference[name]).fetchall())
        got, *timing = sql_queries.timed(lambda: rows_of(a.url, a.db, q), a.runs)
        same = got == want
        if not same:
            failures += 1
            print(f"MISMATCH {name}: influxdb {got} rows, duckdb {want}\n{q}", file=sys.stderr)
        sql_queries.print_result("influxdb", name, timing, got, same)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
