"""psycopg 3 against Strata's PostgreSQL protocol: DDL, inserts with
parameters, prepared statements, text and binary results, the SQL Grafana's
PostgreSQL macros expand to, and errors that leave the connection usable.

Usage: psycopg_check.py PORT. Prints ALL OK at the end; any failed check
raises."""

import datetime
import sys

import psycopg

port = int(sys.argv[1])
UTC = datetime.timezone.utc
conn = psycopg.connect(f"host=127.0.0.1 port={port} dbname=public user=anyone")

with conn.cursor() as cur:
    cur.execute(
        "CREATE TABLE py_pg (ts TIMESTAMP NOT NULL, host STRING TAG, "
        "usage DOUBLE, n BIGINT, ok BOOLEAN, TIMESTAMP KEY(ts))"
    )
    base = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    rows = [
        (base + datetime.timedelta(seconds=30 * i), f"h{i % 3}", i * 1.5, i, i % 2 == 0)
        for i in range(20)
    ]
    # Parameters through the extended protocol (psycopg's default).
    cur.executemany(
        "INSERT INTO py_pg (ts, host, usage, n, ok) VALUES (%s, %s, %s, %s, %s)", rows
    )
    conn.commit()

    cur.execute("SELECT count(*), sum(n) FROM py_pg")
    assert cur.fetchone() == (20, 190), "count and sum"

    cur.execute(
        "SELECT host, usage, n FROM py_pg WHERE host = %s AND n >= %s ORDER BY n",
        ("h1", 10),
    )
    got = cur.fetchall()
    assert got == [("h1", 15.0, 10), ("h1", 19.5, 13), ("h1", 24.0, 16), ("h1", 28.5, 19)], got

    # A string with a quote is bound safely.
    cur.execute("SELECT count(*) FROM py_pg WHERE host = %s", ("x' OR '1'='1",))
    assert cur.fetchone() == (0,), "quoted parameter"

    # A server-side prepared statement, executed several times.
    for h, want in [("h0", 7), ("h1", 7), ("h2", 6)]:
        cur.execute("SELECT count(*) FROM py_pg WHERE host = %s", (h,), prepare=True)
        assert cur.fetchone() == (want,), h

    # Timestamps and booleans come back typed, in text and in binary.
    cur.execute("SELECT ts, ok FROM py_pg WHERE n = %s", (3,))
    ts, ok = cur.fetchone()
    assert ts == datetime.datetime(2024, 5, 1, 12, 1, 30) and ok is False, (ts, ok)
    with conn.cursor(binary=True) as bc:
        bc.execute("SELECT ts, host, usage, n, ok FROM py_pg WHERE n = %s", (4,))
        got = bc.fetchone()
        assert got == (datetime.datetime(2024, 5, 1, 12, 2), "h1", 6.0, 4, True), got

    # What Grafana's macros expand to: $__timeGroupAlias(ts, '1m'),
    # $__timeFilter(ts), and $__unixEpochFilter on an epoch expression.
    cur.execute(
        """SELECT floor(extract(epoch from ts)/60)*60 AS "time", host, avg(usage) AS usage
        FROM py_pg
        WHERE ts BETWEEN '2024-05-01T12:00:00Z' AND '2024-05-01T12:04:59.999Z'
        GROUP BY 1, 2
        ORDER BY 1, 2"""
    )
    got = cur.fetchall()
    assert len(got) == 10, got  # 5 minutes, 2 hosts in each
    assert got[0] == (1714564800.0, "h0", 0.0), got[0]
    cur.execute(
        """SELECT ts AS "time", usage FROM py_pg
        WHERE extract(epoch from ts) >= 1714564800 AND extract(epoch from ts) <= 1714564860
        ORDER BY 1"""
    )
    assert len(cur.fetchall()) == 3

    # What Grafana asks on connect and in its query builder.
    cur.execute("SELECT current_setting('server_version_num')::int/100 AS version")
    assert cur.fetchone() == (1500,)
    cur.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = current_schema() ORDER BY table_name"
    )
    assert ("py_pg",) in cur.fetchall()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)

# A bad statement is an error with a SQLSTATE; the connection keeps working.
with conn.cursor() as cur:
    try:
        cur.execute("SELEC 1")
        raise AssertionError("a syntax error was accepted")
    except psycopg.errors.SyntaxError as e:
        assert "SELEC" in str(e), e
    conn.rollback()
    try:
        cur.execute("SELECT * FROM no_such_table")
        raise AssertionError("a missing table was accepted")
    except psycopg.errors.UndefinedTable:
        pass
    conn.rollback()
    cur.execute("SELECT count(*) FROM py_pg")
    assert cur.fetchone() == (20,)
conn.close()

# The connection's database name selects the Strata database.
with psycopg.connect(f"host=127.0.0.1 port={port} dbname=public user=x", autocommit=True) as c:
    c.execute("CREATE DATABASE pg_other")
with psycopg.connect(f"host=127.0.0.1 port={port} dbname=pg_other user=y", autocommit=True) as c:
    c.execute("CREATE TABLE only_here (ts TIMESTAMP NOT NULL, v DOUBLE, TIMESTAMP KEY(ts))")
    c.execute("INSERT INTO only_here VALUES ('2024-01-01T00:00:00Z', 1.0)")
    assert c.execute("SELECT count(*) FROM only_here").fetchone() == (1,)
with psycopg.connect(f"host=127.0.0.1 port={port} dbname=public user=z", autocommit=True) as c:
    try:
        c.execute("SELECT * FROM only_here")
        raise AssertionError("a table of another database was visible")
    except psycopg.errors.UndefinedTable:
        pass

print("ALL OK")
