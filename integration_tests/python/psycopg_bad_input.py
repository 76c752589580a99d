"""Bad input through psycopg 3 (issue 14): parameters are bound as values and
never become SQL text, several statements in one extended-protocol query are
refused, and statements nested too deeply get a typed error. The connection
stays usable after each error.

Usage: psycopg_bad_input.py PORT. Prints ALL OK at the end; any failed check
raises."""

import datetime
import decimal
import sys

import psycopg

port = int(sys.argv[1])
UTC = datetime.timezone.utc
conn = psycopg.connect(
    f"host=127.0.0.1 port={port} dbname=public user=anyone", autocommit=True
)
cur = conn.cursor()
cur.execute(
    "CREATE TABLE victim (ts TIMESTAMP NOT NULL, host STRING TAG, value DOUBLE, "
    "n BIGINT, TIMESTAMP KEY(ts))"
)
cur.execute(
    "INSERT INTO victim VALUES ('2024-01-01T00:00:00Z', 'a', 1.0, 1), "
    "('2024-01-01T00:00:01Z', 'b', 2.0, 2), ('2024-01-01T00:00:02Z', 'c', 3.0, 3)"
)


def alive():
    cur.execute("SELECT count(*) FROM victim")
    return cur.fetchone()[0]


# The injection of issue 14: pasted as text, `value--1` became a comment and
# the second parameter's newline brought back `FROM victim` without the
# filter, so every row came back.
cur.execute("SELECT host, value-%s FROM victim WHERE host=%s", (-1, "\nFROM victim --"))
got = cur.fetchall()
assert got == [], f"the injection returned rows: {got}"
cur.execute("SELECT host, value-%s FROM victim WHERE host=%s", (-1, "b"))
got = cur.fetchall()
assert got == [("b", 3.0)], got

# Quotes, comments, statement separators and placeholders inside values
# are only text.
for evil in [
    "' OR '1'='1",
    "a' --",
    "a'; DROP TABLE victim; --",
    "$1",
    "a\\'",
    "*/ OR 1=1 /*",
]:
    cur.execute("SELECT count(*) FROM victim WHERE host = %s", (evil,))
    assert cur.fetchone() == (0,), evil
cur.execute("SELECT count(*) FROM victim WHERE host = %s OR host = %s", ("a", "c"))
assert cur.fetchone() == (2,)
# Binary-format parameters too.
cur.execute("SELECT host FROM victim WHERE value > %b ORDER BY host", (1.5,))
assert cur.fetchall() == [("b",), ("c",)]
cur.execute("SELECT host FROM victim WHERE host = %b AND n = %b", ("c", 3))
assert cur.fetchall() == [("c",)]

# Typed parameters round-trip with their types, text and binary.
ts = datetime.datetime(2024, 5, 1, 12, 30, 15, 250000)
tstz = datetime.datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)
values = (7, 2**40, 1.25, "it's", True, ts, tstz, None, decimal.Decimal("12.50"))
for p in ("%s", "%b"):
    cur.execute("SELECT " + ", ".join([p] * len(values)), values)
    got = cur.fetchone()
    assert got[:5] == (7, 2**40, 1.25, "it's", True), (p, got)
    assert got[5] == ts, (p, got[5])
    assert got[6] == tstz, (p, got[6])
    assert got[7] is None, (p, got[7])
    assert got[8] == decimal.Decimal("12.50"), (p, got[8])
# A parameter is cast to the type its place needs, or refused with a reason.
cur.execute("SELECT host FROM victim WHERE n = %s", ("2",))
assert cur.fetchall() == [("b",)]
try:
    cur.execute("SELECT host FROM victim WHERE n = %s", ("two",))
    raise AssertionError("a non-number was compared to a BIGINT column")
except psycopg.Error as e:
    assert "$1" in str(e), e

# INSERT with parameters stores the values as they are.
cur.execute(
    "INSERT INTO victim (ts, host, value, n) VALUES (%s, %s, %s, %s)",
    (datetime.datetime(2024, 1, 1, 0, 0, 3, tzinfo=UTC), "d'); DROP TABLE victim; --", 4.5, 4),
)
cur.execute("SELECT host, value, n FROM victim WHERE ts = %s", (datetime.datetime(2024, 1, 1, 0, 0, 3),))
assert cur.fetchall() == [("d'); DROP TABLE victim; --", 4.5, 4)]
assert alive() == 4

# Several statements in one extended-protocol query are refused (42601),
# with parameters or without.
for args in [(("SELECT %s; SELECT 2",), {"params": (1,)}), (("SELECT 1; SELECT 2",), {"prepare": True})]:
    try:
        cur.execute(*args[0], **args[1])
        raise AssertionError("several statements were accepted")
    except psycopg.errors.SyntaxError as e:
        assert "multiple commands" in str(e), e
    assert alive() == 4

# Statements nested too deeply are refused with a typed error (54001), over
# the simple protocol and with parameters.
deep = [
    "SELECT " + "(" * 100_000 + "1" + ")" * 100_000,
    "SELECT " + "(SELECT " * 2_000 + "1" + ")" * 2_000,
    "SELECT * FROM " + "(SELECT * FROM " * 2_000 + "victim" + ") AS x" * 2_000,
]
for sql in deep:
    for params in (None, (1,)):
        q = sql if params is None else "SELECT %s, " + sql[len("SELECT ") :]
        try:
            cur.execute(q, params)
            raise AssertionError(f"a statement of {len(q)} bytes nested too deeply ran")
        except psycopg.errors.StatementTooComplex as e:
            assert "nest" in str(e), e
        assert alive() == 4

conn.close()
print("ALL OK")
