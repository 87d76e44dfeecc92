"""Checks vigil's rollups against DuckDB over the same raw data.

Usage: check_rollups.py URL

Writes two days-old raw samples (10 s apart, three hosts, a gauge and a counter
with resets, one of them on the first sample of a bucket and one on the first
sample of an hour; a host that skips a bucket; NULL fields), runs maintenance
(`POST /api/v1/admin/maintenance`), and compares every row of `rollup_10m.cpu`
and `rollup_1h.cpu` (count, sum, min, max, first, last with their times, the
reset-aware increase) with DuckDB's answer over the raw rows. Then writes late
samples into a bucket already rolled up, runs maintenance again and checks the
bucket was rolled up again, and the watermark in `system.rollups`.
Prints "ok: ..." on success; exits non-zero naming the first difference.
"""

import json
import random
import sys
import time
import urllib.request

import duckdb

URL = sys.argv[1]
TEN_MIN = 600 * 10**9
HOUR = 3600 * 10**9


def post(path, body, content_type="text/plain"):
    req = urllib.request.Request(URL + path, data=body.encode(), method="POST",
                                 headers={"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=300) as r:
        return r.read()


def sql(q):
    body = json.dumps({"sql": q, "format": "json"})
    return json.loads(post("/api/v1/sql", body, "application/json"))


def maintenance():
    report = json.loads(post("/api/v1/admin/maintenance", ""))
    if report["errors"]:
        sys.exit(f"maintenance failed: {report['errors']}")
    return report


rnd = random.Random(7)
# Two days ago, aligned to the hour, plus 5 s so samples do not sit on edges
# (except the ones placed there on purpose).
start = (time.time_ns() - 2 * 86400 * 10**9) // HOUR * HOUR
raw = []  # (host, t, usage or None, requests or None)
for host in ["a", "b", "c"]:
    counter = rnd.uniform(0, 100)
    for i in range(3 * 360 + 17):  # three hours and a bit, every 10 s
        t = start + i * 10 * 10**9 + (5 * 10**9 if host != "a" else 0)
        if host == "c" and 90 <= i < 150:
            continue  # a gap of ten minutes and more
        counter += rnd.uniform(0, 5)
        # Resets: on the first sample of the second bucket, of the second hour,
        # and in the middle of a bucket.
        if (host == "a" and i in (60, 360)) or i == 200:
            counter = rnd.uniform(0, 3)
        usage = round(rnd.uniform(0, 100), 3) if rnd.random() > 0.05 else None
        requests = counter if rnd.random() > 0.03 else None
        raw.append((host, t, usage, requests))


def lines(rows):
    out = []
    for host, t, usage, requests in rows:
        fields = []
        if usage is not None:
            fields.append(f"usage={usage!r}")
        if requests is not None:
            fields.append(f"requests={requests!r}")
        if fields:
            out.append(f"cpu,host={host} {','.join(fields)} {t}")
    return "\n".join(out) + "\n"


def maintain_until_rolled(what):
    """Runs maintenance until it rolls something up: rows are rolled up once they
    are flushed (the server runs with a short flush interval)."""
    for _ in range(150):
        if maintenance()["rollup_rows_written"] > 0:
            return
        time.sleep(0.2)
    sys.exit(f"{what} was never rolled up")


post("/api/v3/write_lp?db=x", lines(raw))
maintain_until_rolled("the data")

con = duckdb.connect()


def expected(resolution):
    con.execute("DROP TABLE IF EXISTS raw")
    con.execute("CREATE TABLE raw (host VARCHAR, t BIGINT, usage DOUBLE, requests DOUBLE)")
    con.executemany("INSERT INTO raw VALUES (?, ?, ?, ?)", raw)
    out = {}
    for field in ["usage", "requests"]:
        rows = con.execute(f"""
            WITH d AS (
                SELECT host, t, {field} AS v, (t // {resolution}) * {resolution} AS bucket
                FROM raw WHERE {field} IS NOT NULL
            ), s AS (
                SELECT *, lag(v) OVER (PARTITION BY host, bucket ORDER BY t) AS prev FROM d
            )
            SELECT host, bucket, count(v), sum(v), min(v), max(v),
                   arg_min(v, t), min(t), arg_max(v, t), max(t),
                   sum(CASE WHEN prev IS NULL THEN 0 WHEN v >= prev THEN v - prev ELSE v END)
            FROM s GROUP BY host, bucket ORDER BY host, bucket""").fetchall()
        for r in rows:
            out[(r[0], r[1], field)] = r[2:]
    return out


def actual(table):
    got = {}
    rows = sql(f"""SELECT *, CAST(time AS BIGINT) AS t FROM {table} ORDER BY host, time""")
    for r in rows:
        for field in ["usage", "requests"]:
            # 0: the series had rows in the bucket but no value of this field
            # (the row makes a group in SQL over the raw rows, as it does here).
            if not r.get(f"{field}_count"):
                continue
            got[(r["host"], r["t"], field)] = tuple(
                r[f"{field}_{s}"] for s in
                ["count", "sum", "min", "max", "first", "first_time", "last", "last_time", "increase"])
    return got


def compare(table, resolution):
    want, got = expected(resolution), actual(table)
    if set(want) != set(got):
        missing = sorted(set(want) - set(got))[:3]
        extra = sorted(set(got) - set(want))[:3]
        sys.exit(f"{table}: buckets differ: missing {missing}, extra {extra}")
    for key, w in want.items():
        g = got[key]
        for name, a, b in zip(["count", "sum", "min", "max", "first", "first_time", "last",
                               "last_time", "increase"], g, w):
            if abs(a - b) > 1e-9 * max(1.0, abs(b)):
                sys.exit(f"{table} {key} {name}: vigil {a}, duckdb {b}")
    return len(want)


n10 = compare("rollup_10m.cpu", TEN_MIN)
n1h = compare("rollup_1h.cpu", HOUR)

# A late write into a bucket already rolled up: it is rolled up again.
late = [("a", start + 25 * 10**9 + 1, 1000.0, None), ("b", start + 3 * 10**9, None, 0.5)]
raw.extend(late)
post("/api/v3/write_lp?db=x", lines(late))
maintain_until_rolled("the late write")
compare("rollup_10m.cpu", TEN_MIN)
compare("rollup_1h.cpu", HOUR)
first = sql("SELECT usage_max FROM rollup_10m.cpu WHERE host = 'a' ORDER BY time LIMIT 1")[0]
assert first["usage_max"] == 1000.0, first
marks = sql("SELECT table_name, CAST(rolled_10m AS BIGINT) AS r10, CAST(rolled_1h AS BIGINT) AS r1 "
            "FROM system.rollups")
assert len(marks) == 1 and marks[0]["table_name"] == "cpu", marks
assert marks[0]["r10"] >= start + 3 * HOUR and marks[0]["r1"] >= start + 3 * HOUR, marks
print(f"ok: {n10} 10-minute and {n1h} 1-hour buckets match DuckDB, before and after a late write")
