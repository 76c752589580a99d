"""The TSBS query set (bench/queries.py) against one Strata instance over
its PostgreSQL protocol, each answer checked against DuckDB's over the same
rows in Parquet. Used by bench/run-scaling, which runs it against one
instance and against two.

Prints one JSON object per query: mean, median and p99 ms, rows, and
whether they match DuckDB's.

Usage: scaling.py --pg-port P --db DB --parquet FILE --start RFC3339
                  --duration-s S --scale N [--runs R] [--table T]
                  [--label L] [--only q1,q2]
"""

import argparse
import json
import re
import sys

import psycopg

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import queries as tsbs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg-port", type=int, required=True)
    ap.add_argument("--table", default="cpu")
    ap.add_argument("--label", default="")
    ap.add_argument("--only", default="")
    tsbs.dataset_args(ap)
    args = ap.parse_args()
    start = tsbs.start_of(args)
    only = set(filter(None, args.only.split(",")))

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
        got, *timing = tsbs.timed(lambda: pg.execute(own).fetchall(), args.runs)
        same = tsbs.norm(got) == tsbs.norm(ref)
        if not same:
            failures += 1
            print(f"MISMATCH {name}: {len(got)} rows, duckdb {len(ref)}\n{own}", file=sys.stderr)
        tsbs.print_result("strata", name, timing, len(got), same, label=args.label)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
