"""The TSBS query set (bench/queries.py) against one Strata instance over
its PostgreSQL protocol, each answer checked against DuckDB's over the same
rows in Parquet. Used by bench/run-scaling, which runs it against one
instance and against two.

Prints one JSON object per query: mean, median and p99 ms, rows, whether
they match DuckDB's, (with --pids) the CPU ms each instance spent per query,
and (with --grpc-port) the same query's times over gRPC, whose answer is
Arrow (`strata-bench query`; the same row count is checked).

Usage: scaling.py --pg-port P --db DB --parquet FILE --start RFC3339
                  --duration-s S --scale N [--runs R] [--table T]
                  [--label L] [--only q1,q2] [--pids P1,P2]
                  [--grpc-port P --bench STRATA_BENCH]
"""

import argparse
import json
import os
import re
import subprocess
import sys

import psycopg

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import queries as tsbs  # noqa: E402


def cpu_s(pid):
    """CPU seconds process `pid` has used (every thread, user and system)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg-port", type=int, required=True)
    ap.add_argument("--table", default="cpu")
    ap.add_argument("--label", default="")
    ap.add_argument("--only", default="")
    ap.add_argument("--pids", default="", help="instances' pids: CPU ms each spent per query")
    ap.add_argument("--grpc-port", type=int, default=0,
                    help="also time each query over gRPC (Arrow answers) with --bench")
    ap.add_argument("--bench", default="", help="the strata-bench binary")
    tsbs.dataset_args(ap)
    args = ap.parse_args()
    start = tsbs.start_of(args)
    only = set(filter(None, args.only.split(",")))
    pids = [int(p) for p in args.pids.split(",") if p]

    duck = tsbs.duckdb_over(args.parquet)
    pg = psycopg.connect(
        f"host=127.0.0.1 port={args.pg_port} dbname={args.db} user=bench", autocommit=True
    )
    failures = 0
    for name, sql in tsbs.queries(start, args.duration_s, args.scale).items():
        if only and name not in only:
            continue
        ref = duck.execute(sql).fetchall()
        own = tsbs.strata_sql(name, sql)
        # The same query on another table of the same rows.
        own = re.sub(r"\bcpu\b(?!_)", args.table, own) if args.table != "cpu" else own
        before = [cpu_s(p) for p in pids]
        got, *timing = tsbs.timed(lambda: pg.execute(own).fetchall(), args.runs)
        # The warm-up run counts too: runs + 1 queries.
        cpu_ms = [round((cpu_s(p) - b) * 1000.0 / (args.runs + 1), 1) for p, b in zip(pids, before)]
        same = tsbs.norm(got) == tsbs.norm(ref)
        if not same:
            failures += 1
            print(f"MISMATCH {name}: {len(got)} rows, duckdb {len(ref)}\n{own}", file=sys.stderr)
        extra = {"cpu_ms": cpu_ms} if pids else {}
        if args.grpc_port and args.bench:
            run = subprocess.run(
                [args.bench, "query", "--endpoint", f"127.0.0.1:{args.grpc_port}", "--db", args.db,
                 "--runs", str(args.runs)],
                input=own, capture_output=True, text=True)
            g = json.loads(run.stdout) if run.returncode == 0 else {"rows": None, "mean_ms": None,
                                                                   "median_ms": None}
            if run.returncode != 0:
                failures += 1
                print(f"FAILED {name} over gRPC: {run.stderr.strip()}", file=sys.stderr)
            elif g["rows"] != len(got):
                failures += 1
                print(f"MISMATCH {name} over gRPC: {g['rows']} rows, {len(got)} over pg", file=sys.stderr)
            extra["grpc_mean_ms"] = g["mean_ms"]
            extra["grpc_median_ms"] = g["median_ms"]
        tsbs.print_result("strata", name, timing, len(got), same, label=args.label, **extra)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
