"""Checks vigil's time-series SQL functions against independent computations on the
same data: DuckDB (time_bucket, first/last as arg_min/arg_max, moving averages as
window averages, time zone literals) and plain Python (Prometheus-style counters,
gap filling with locf/interpolate, edge cases).

Usage: python3 check_functions.py http://127.0.0.1:PORT
Writes a seeded random data set (irregular intervals, NULLs, counter resets,
out-of-order writes, a gap, a one-point series) into table `fx`, queries vigil over
HTTP and compares every row. Prints "ok: N checks" and exits 0, or lists the
mismatches and exits 1.
"""
import datetime as dt
import json
import math
import random
import sys
import urllib.request

import duckdb

URL = sys.argv[1]
T0 = dt.datetime(2026, 2, 3, 0, 0, 13)  # naive UTC, not aligned to any bucket
HOSTS = ["h1", "h2", "h3"]
failures = []
checks = 0


def epoch(t):
    return (t - dt.datetime(1970, 1, 1)).total_seconds()


def make_points():
    rnd = random.Random(42)
    points = []  # (host, time, g or None, c or None)
    for host in HOSTS:
        t = T0 + dt.timedelta(milliseconds=rnd.randrange(0, 5000))
        c = rnd.uniform(0, 100)
        while t < T0 + dt.timedelta(hours=2):
            gap = host == "h2" and T0 + dt.timedelta(minutes=40) <= t < T0 + dt.timedelta(minutes=66)
            if not gap:
                g = None if rnd.random() < 0.1 else round(rnd.uniform(-50, 50), 3)
                if rnd.random() < 0.03:
                    c = round(rnd.uniform(0, 5), 2)  # counter reset
                else:
                    c = round(c + rnd.uniform(0, 20), 2)
                cv = None if rnd.random() < 0.05 else c
                if g is not None or cv is not None:
                    points.append((host, t, g, cv))
            t += dt.timedelta(milliseconds=rnd.randrange(7000, 53000))
    points.append(("h4", T0 + dt.timedelta(minutes=30), 7.5, 3.0))  # a one-point series
    return points


def write(points):
    lines = []
    for host, t, g, c in points:
        fields = []
        if g is not None:
            fields.append(f"g={g!r}")
        if c is not None:
            fields.append(f"c={c!r}")
        ns = int(round(epoch(t) * 1000)) * 1_000_000
        lines.append(f"fx,host={host} {','.join(fields)} {ns}")
    random.Random(7).shuffle(lines)  # out-of-order arrival
    for i in range(0, len(lines), 200):
        body = "\n".join(lines[i : i + 200]).encode()
        req = urllib.request.Request(URL + "/api/v3/write_lp", data=body, method="POST")
        with urllib.request.urlopen(req) as r:
            assert r.status == 204, r.read()


def vigil(sql):
    body = json.dumps({"sql": sql, "format": "json"}).encode()
    req = urllib.request.Request(
        URL + "/api/v1/sql", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req) as r:
            rows = json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise SystemExit(f"vigil failed on {sql}: {e.read().decode()}")
    return [tuple(row.values()) for row in rows]


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def compare(name, got, want):
    global checks
    checks += 1
    if len(got) != len(want):
        failures.append(f"{name}: {len(got)} rows from vigil, {len(want)} expected")
        return
    for i, (g, w) in enumerate(zip(got, want)):
        if len(g) != len(w) or not all(close(x, y) for x, y in zip(g, w)):
            failures.append(f"{name}: row {i}: vigil {g}, expected {w}")
            return


def counter_increase(samples):
    inc = 0.0
    for (_, a), (_, b) in zip(samples, samples[1:]):
        inc += b - a if b >= a else b
    return inc


def counters(samples):
    """increase, rate, irate, delta over (time ms, value) samples, no extrapolation."""
    s = sorted((t, v) for t, v in samples if v is not None)
    if len(s) < 2:
        return (None, None, None, None)
    inc = counter_increase(s)
    (t1, v1), (t2, v2) = s[-2], s[-1]
    irate = (v2 - v1 if v2 >= v1 else v2) / ((t2 - t1) / 1000)
    return (inc, inc / ((s[-1][0] - s[0][0]) / 1000), irate, s[-1][1] - s[0][1])


def main():
    points = make_points()
    write(points)
    db = duckdb.connect()
    db.execute("SET TimeZone = 'UTC'")
    db.execute("CREATE TABLE fx (host VARCHAR, time TIMESTAMP, g DOUBLE, c DOUBLE)")
    db.executemany("INSERT INTO fx VALUES (?, ?, ?, ?)", points)

    # time_bucket, default origin (Monday 2000-01-03) and an explicit origin.
    compare(
        "time_bucket 7 minutes",
        vigil("SELECT host, extract(epoch from time_bucket('7 minutes', time)) AS b, count(*), "
              "avg(g), min(g), max(g) FROM fx GROUP BY 1, 2 ORDER BY 1, 2"),
        db.execute("SELECT host, epoch(time_bucket(INTERVAL '7 minutes', time)) AS b, count(*), "
                   "avg(g), min(g), max(g) FROM fx GROUP BY 1, 2 ORDER BY 1, 2").fetchall(),
    )
    compare(
        "time_bucket 15 minutes with origin",
        vigil("SELECT host, extract(epoch from time_bucket(interval '15 minutes', time, "
              "'2026-02-03T00:05:00Z')) AS b, count(c) FROM fx GROUP BY 1, 2 ORDER BY 1, 2"),
        db.execute("SELECT host, epoch(time_bucket(INTERVAL '15 minutes', time, "
                   "TIMESTAMP '2026-02-03 00:05:00')) AS b, count(c) FROM fx GROUP BY 1, 2 "
                   "ORDER BY 1, 2").fetchall(),
    )
    compare(
        "time_bucket 1 day",
        vigil("SELECT extract(epoch from time_bucket('1 day', time)) AS b, count(*) FROM fx "
              "GROUP BY 1 ORDER BY 1"),
        db.execute("SELECT epoch(time_bucket(INTERVAL '1 day', time)), count(*) FROM fx "
                   "GROUP BY 1 ORDER BY 1").fetchall(),
    )

    # first / last: value at the earliest / latest time, NULLs skipped.
    compare(
        "first/last per 10 minutes",
        vigil("SELECT host, extract(epoch from time_bucket('10 minutes', time)) AS b, "
              "first(g, time), last(g, time), first(c, time), last(c, time) FROM fx "
              "GROUP BY 1, 2 ORDER BY 1, 2"),
        db.execute("SELECT host, epoch(time_bucket(INTERVAL '10 minutes', time)) AS b, "
                   "arg_min(g, time) FILTER (WHERE g IS NOT NULL), "
                   "arg_max(g, time) FILTER (WHERE g IS NOT NULL), "
                   "arg_min(c, time) FILTER (WHERE c IS NOT NULL), "
                   "arg_max(c, time) FILTER (WHERE c IS NOT NULL) "
                   "FROM fx GROUP BY 1, 2 ORDER BY 1, 2").fetchall(),
    )

    # moving_average(v, n) is the mean of the current and n-1 previous rows.
    compare(
        "moving_average 4",
        vigil("SELECT host, extract(epoch from time), moving_average(g, 4) OVER "
              "(PARTITION BY host ORDER BY time) FROM fx ORDER BY 1, 2"),
        db.execute("SELECT host, epoch(time), avg(g) OVER (PARTITION BY host ORDER BY time "
                   "ROWS BETWEEN 3 PRECEDING AND CURRENT ROW) FROM fx ORDER BY 1, 2").fetchall(),
    )

    # Time zone literals: 01:30+01:00 is 00:30Z.
    compare(
        "time zone literal",
        vigil("SELECT host, count(*) FROM fx WHERE time >= '2026-02-03T01:30:00+01:00' "
              "AND time < '2026-02-03T03:00:00+02:00' GROUP BY 1 ORDER BY 1"),
        db.execute("SELECT host, count(*) FROM fx WHERE time >= TIMESTAMP '2026-02-03 00:30:00' "
                   "AND time < TIMESTAMP '2026-02-03 01:00:00' GROUP BY 1 ORDER BY 1").fetchall(),
    )

    # Counters per 10-minute bucket and as a sliding window, against Python.
    # Times as integer milliseconds since T0, so that differences are exact (epoch
    # seconds as floats lose ~1e-7 s, which shows in rates).
    ms = lambda t: round((t - T0).total_seconds() * 1000)
    origin = epoch(dt.datetime(2000, 1, 3))
    by_bucket = {}
    for host, t, g, c in points:
        b = math.floor((epoch(t) - origin) / 600) * 600 + origin
        by_bucket.setdefault((host, b), []).append((ms(t), c))
    want = [(h, b) + counters(s) for (h, b), s in sorted(by_bucket.items())]
    compare(
        "increase/rate/irate/delta per 10 minutes",
        vigil("SELECT host, extract(epoch from time_bucket('10 minutes', time)) AS b, "
              "increase(c, time), rate(c, time), irate(c, time), delta(c, time) FROM fx "
              "GROUP BY 1, 2 ORDER BY 1, 2"),
        want,
    )
    want = []
    for host in sorted({p[0] for p in points}):
        rows = sorted((ms(t), c) for h, t, g, c in points if h == host)
        for i, (t, _) in enumerate(rows):
            window = rows[max(0, i - 5) : i + 1]
            inc, rate, _, _ = counters(window)
            want.append((host, epoch(T0) + t / 1000, inc, rate))
    compare(
        "increase/rate over ROWS 5 PRECEDING",
        vigil("SELECT host, extract(epoch from time), "
              "increase(c, time) OVER (PARTITION BY host ORDER BY time ROWS 5 PRECEDING), "
              "rate(c, time) OVER (PARTITION BY host ORDER BY time ROWS 5 PRECEDING) "
              "FROM fx ORDER BY 1, 2"),
        want,
    )

    # Gap filling over [00:20, 01:20) in 5-minute bins (origin 1970-01-01): h2 has no
    # data from 00:40:13 to 01:06:13, h4 has one point.
    lo, hi = dt.datetime(2026, 2, 3, 0, 20), dt.datetime(2026, 2, 3, 1, 20)
    bins = [epoch(lo) + 300 * i for i in range(12)]
    want = []
    for host in ["h1", "h2", "h3", "h4"]:
        avgs = []
        for b in bins:
            vals = [g for h, t, g, c in points if h == host and b <= epoch(t) < b + 300 and g is not None]
            avgs.append(sum(vals) / len(vals) if vals else None)
        locf, last = [], None
        for a in avgs:
            last = a if a is not None else last
            locf.append(last)
        interp = list(avgs)
        known = [i for i, a in enumerate(avgs) if a is not None]
        for i in range(len(avgs)):
            if avgs[i] is None:
                left = [k for k in known if k < i]
                right = [k for k in known if k > i]
                if left and right:
                    l, r = left[-1], right[0]
                    interp[i] = avgs[l] + (avgs[r] - avgs[l]) * (i - l) / (r - l)
        for b, a, lv, iv in zip(bins, avgs, locf, interp):
            want.append((host, b, a, lv, iv))
    # One filling per aggregate and query (vigil refuses to mix them).
    for i, agg in enumerate(["avg(g)", "locf(avg(g))", "interpolate(avg(g))"]):
        compare(
            f"date_bin_gapfill with {agg}",
            [
                (h, epoch(dt.datetime.fromisoformat(t.rstrip("Z"))), v)
                for h, t, v in vigil(
                    f"SELECT host, date_bin_gapfill(interval '5 minutes', time) AS t, {agg} "
                    "FROM fx WHERE time >= '2026-02-03T00:20:00Z' AND time < '2026-02-03T01:20:00Z' "
                    "GROUP BY 1, 2 ORDER BY 1, 2"
                )
            ],
            [(h, b, row[i]) for h, b, *row in want],
        )

    # Edge cases: an empty range, a one-point series, NULL-only input.
    compare(
        "empty range",
        vigil("SELECT increase(c, time), first(g, time), count(*) FROM fx WHERE time < '2000-01-01T00:00:00Z'"),
        [(None, None, 0)],
    )
    compare(
        "one point",
        vigil("SELECT increase(c, time), rate(c, time), delta(c, time), first(g, time), last(g, time) "
              "FROM fx WHERE host = 'h4'"),
        [(None, None, None, 7.5, 7.5)],
    )
    compare(
        "bucket boundary",
        vigil("SELECT extract(epoch from time_bucket('30 minutes', time)) FROM fx WHERE host = 'h4'"),
        [(epoch(dt.datetime(2026, 2, 3, 0, 30)),)],
    )

    if failures:
        print("\n".join(failures))
        sys.exit(1)
    print(f"ok: {checks} checks")


if __name__ == "__main__":
    main()
