"""The TSBS cpu-only queries in PromQL, for the queries PromQL can express,
timed over HTTP (`/api/v1/query_range`, `/api/v1/query`) on Strata and on
VictoriaMetrics, each loaded with the same rows as Prometheus remote write
(one series per host and field: `cpu_usage_user{hostname=...}`).

Each answer is checked, value by value, against DuckDB's answer to the SQL
form of the query on the Parquet file (floats to a relative 1e-9).

How the SQL buckets map to PromQL: a SQL bucket [t, t + w) holds the samples
at t, t + 10 s, ..., t + w - 10 s. The PromQL form evaluates
`max_over_time(m[w] offset 1s)` at t + w, whose window ends 1 s before the
next bucket's first sample; so the same samples, under either the closed
window of Prometheus 2 or the left-open one of Prometheus 3 and
VictoriaMetrics. Queries over several fields join one expression per field,
each labelled with `label_replace(..., "field", "<field>", "", "")`, by `or`.

high-cpu-1 and high-cpu-all return rows where a field passes a threshold:
PromQL evaluates at steps and cannot return the raw rows, so they are not
run. VictoriaMetrics gets `nocache=1`, so that every run computes its answer
rather than reading its rollup-result cache.

Prints one JSON object per query and engine.

Usage: promql.py [--strata URL --db DB] [--vm URL] --parquet FILE
                 --start RFC3339 --duration-s S --scale N [--runs R]
"""

import argparse
import datetime
import json
import math
import sys
import urllib.parse
import urllib.request

import queries as sql_queries

FIELDS = sql_queries.FIELDS


def epoch(t):
    return int(t.replace(tzinfo=datetime.timezone.utc).timestamp())


def promql(start, duration_s, scale):
    """name -> (PromQL, params, SQL reference, shape). `shape` tells how a
    reference row maps to (key, value) pairs: "max" rows are (bucket,
    max per field...), "avg" rows (bucket, hostname, avg per field...),
    "last" rows are lastpoint-join's."""
    end = start + datetime.timedelta(seconds=duration_s)
    sql = sql_queries.queries(start, duration_s, scale)

    def window_end(hours):
        return min(end, start + datetime.timedelta(hours=hours))

    def hosts(n):
        step = max(1, scale // n)
        return "|".join(f"host_{(i * step) % scale}" for i in range(n))

    def per_field(n, one):
        return " or ".join(
            f'label_replace({one(f)}, "field", "{f}", "", "")' for f in FIELDS[:n]
        )

    def rng(a, b, width):
        # Evaluate at the end of every bucket of [a, b).
        return {"start": epoch(a) + width, "end": epoch(b), "step": width}

    q = {}
    for metrics, nhosts, hours in [(1, 1, 1), (1, 1, 12), (1, 8, 1), (5, 1, 1), (5, 1, 12), (5, 8, 1)]:
        name = f"single-groupby-{metrics}-{nhosts}-{hours}"
        sel = f'{{hostname=~"{hosts(nhosts)}"}}'
        q[name] = (
            per_field(metrics, lambda f: f"max(max_over_time(cpu_{f}{sel}[1m] offset 1s))"),
            rng(start, window_end(hours), 60), sql[name], "max", 60)
    for nhosts in [1, 8]:
        name = f"cpu-max-all-{nhosts}"
        sel = f'{{hostname=~"{hosts(nhosts)}"}}'
        q[name] = (
            per_field(10, lambda f: f"max(max_over_time(cpu_{f}{sel}[1h] offset 1s))"),
            rng(start, window_end(8), 3600), sql[name], "max", 3600)
    for name, n in [("1", 1), ("5", 5), ("all", 10)]:
        name = f"double-groupby-{name}"
        q[name] = (
            per_field(n, lambda f: f"avg by (hostname) (avg_over_time(cpu_{f}[1h] offset 1s))"),
            rng(start, window_end(12), 3600), sql[name], "avg", 3600)
    q["lastpoint"] = ('{__name__=~"cpu_.*"}', {"time": epoch(end)}, sql["lastpoint-join"], "last", 0)
    q["groupby-orderby-limit"] = (
        per_field(1, lambda f: f"max(max_over_time(cpu_{f}[1m] offset 1s))"),
        rng(end - datetime.timedelta(minutes=5), end, 60), sql["groupby-orderby-limit"], "max", 60)
    return q


def reference_points(shape, rows):
    """DuckDB's rows as {key: value}, keyed like `answer_points`."""
    out = {}
    for r in rows:
        if shape == "max":
            for f, v in zip(FIELDS, r[1:]):
                out[(f, epoch(r[0]))] = v
        elif shape == "avg":
            for f, v in zip(FIELDS, r[2:]):
                out[(f, r[1], epoch(r[0]))] = v
        else:  # lastpoint-join: timestamp, tags..., fields...
            host = r[1]
            for f, v in zip(FIELDS, r[1 + len(sql_queries.TAGS):]):
                out[(f, host)] = v
    return out


def answer_points(shape, width, data):
    """A Prometheus API answer as {key: value}: the bucket of a point is its
    evaluation time minus the bucket width."""
    out = {}
    for s in data["result"]:
        m = s["metric"]
        if shape == "last":
            out[(m["__name__"][len("cpu_"):], m["hostname"])] = float(s["value"][1])
            continue
        for t, v in s["values"]:
            key = (m["field"],) if shape == "max" else (m["field"], m["hostname"])
            out[key + (int(float(t)) - width,)] = float(v)
    return out


def same(ref, got):
    if ref.keys() != got.keys():
        return False
    return all(math.isclose(ref[k], got[k], rel_tol=1e-9, abs_tol=1e-9) for k in ref)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", help="Strata's HTTP base URL")
    ap.add_argument("--vm", help="VictoriaMetrics' HTTP base URL")
    sql_queries.dataset_args(ap)
    args = ap.parse_args()
    start = sql_queries.start_of(args)
    duck = sql_queries.duckdb_over(args.parquet)

    engines = []
    if args.strata:
        engines.append(("strata-promql", args.strata, {"db": args.db}))
    if args.vm:
        engines.append(("victoriametrics", args.vm, {"nocache": "1"}))

    failures = 0
    for name, (expr, params, sql, shape, width) in promql(start, args.duration_s, args.scale).items():
        ref = reference_points(shape, duck.execute(sql).fetchall())
        path = "/api/v1/query" if "time" in params else "/api/v1/query_range"
        for engine, base, extra in engines:
            body = urllib.parse.urlencode({"query": expr, **params, **extra}).encode()

            def run():
                req = urllib.request.Request(base + path, data=body)
                with urllib.request.urlopen(req, timeout=600) as r:
                    doc = json.load(r)
                if doc.get("status") != "success":
                    raise RuntimeError(f"{engine} {name}: {doc}")
                return doc["data"]

            data, *timing = sql_queries.timed(run, args.runs)
            got = answer_points(shape, width, data)
            ok = same(ref, got)
            if not ok:
                failures += 1
                missing = len(ref.keys() - got.keys())
                extra_keys = len(got.keys() - ref.keys())
                print(f"MISMATCH {name}: {engine} {len(got)} points ({missing} missing, "
                      f"{extra_keys} extra), duckdb {len(ref)}\n{expr}", file=sys.stderr)
            sql_queries.print_result(engine, name, timing, len(got), ok, language="promql")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
