#!/usr/bin/env python3
"""TSBS cpu-only query benchmark: vigil (HTTP SQL API, Arrow IPC results) side by
side with DuckDB reading the very Parquet files vigil wrote.

    python3 benches/run-query.py                    # 1000 hosts x 1 day, 5 runs each
    python3 benches/run-query.py --hosts 100 --hours 4 --runs 3

Steps: generate TSBS cpu-only line protocol, ingest it into a fresh `vigil serve`,
stop vigil (the buffer is flushed to Parquet), start it again on the same data and
time each query (median of --runs after one warm-up run) through vigil with its
result cache off and through DuckDB (in-process, same number of threads as vigil
has cores); then once more through vigil with the result cache on. Each query's row
count is compared between the two engines. Needs `pip install duckdb`.
"""
import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port  # noqa: E402
BIN = os.path.join(ROOT, "target", "release")
START = 1_699_920_000  # 2023-11-14T00:00:00Z


def ts(sec):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))


def queries(hosts, hours, rng):
    end = START + hours * 3600
    def window(length):
        t = rng.randrange(START, end - length + 1, 60)
        return ts(t), ts(t + length)
    def host_list(n):
        return ", ".join(f"'host_{h}'" for h in rng.sample(range(hosts), n))
    q = {}
    metrics5 = ["usage_user", "usage_system", "usage_idle", "usage_nice", "usage_iowait"]
    all10 = metrics5 + ["usage_irq", "usage_softirq", "usage_steal", "usage_guest", "usage_guest_nice"]
    # single-groupby-M-H-T: max of M metrics per minute, H random hosts, T hours.
    for m, h, t in [(1, 1, 1), (1, 1, 12), (1, 8, 1), (5, 1, 1), (5, 1, 12), (5, 8, 1)]:
        a, b = window(min(t, hours) * 3600)
        q[f"single-groupby-{m}-{h}-{t}"] = (
            "SELECT date_trunc('minute', time) AS minute, "
            + ", ".join(f"max({x}) AS max_{x}" for x in metrics5[:m])
            + f" FROM cpu WHERE hostname IN ({host_list(h)}) AND time >= '{a}' AND time < '{b}' GROUP BY 1 ORDER BY 1")
    # cpu-max-all-H: max of all metrics per hour, H hosts, 8 hours.
    for h in [1, 8]:
        a, b = window(min(8, hours) * 3600)
        q[f"cpu-max-all-{h}"] = (
            "SELECT date_trunc('hour', time) AS hour, "
            + ", ".join(f"max({x}) AS max_{x}" for x in all10)
            + f" FROM cpu WHERE hostname IN ({host_list(h)}) AND time >= '{a}' AND time < '{b}' GROUP BY 1 ORDER BY 1")
    # double-groupby-M: mean of M metrics per hour and host, 12 hours.
    for name, ms in [("1", metrics5[:1]), ("5", metrics5), ("all", all10)]:
        a, b = window(min(12, hours) * 3600)
        q[f"double-groupby-{name}"] = (
            "SELECT date_trunc('hour', time) AS hour, hostname, "
            + ", ".join(f"avg({x}) AS mean_{x}" for x in ms)
            + f" FROM cpu WHERE time >= '{a}' AND time < '{b}' GROUP BY 1, 2 ORDER BY 1, 2")
    a, b = window(min(12, hours) * 3600)
    q["high-cpu-1"] = (
        f"SELECT * FROM cpu WHERE usage_user > 90.0 AND time >= '{a}' AND time < '{b}' "
        f"AND hostname IN ({host_list(1)})")
    q["high-cpu-all"] = f"SELECT * FROM cpu WHERE usage_user > 90.0 AND time >= '{a}' AND time < '{b}'"
    q["lastpoint"] = "SELECT DISTINCT ON (hostname) * FROM cpu ORDER BY hostname, time DESC"
    # The same answer from vigil's last-value cache (DuckDB runs the query above).
    q["lastpoint (last_cache)"] = ("SELECT * FROM last_cache('cpu')", q["lastpoint"])
    a, _ = window(3600)
    q["groupby-orderby-limit"] = (
        f"SELECT date_trunc('minute', time) AS minute, max(usage_user) AS max_usage_user FROM cpu "
        f"WHERE time < '{a}' GROUP BY 1 ORDER BY 1 DESC LIMIT 5")
    return q


def run(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, check=True, **kw)


COMPACTION = []


def start_vigil(data, port, result_cache=True, extra=None, **popen):
    """Starts vigil and waits until it is healthy. `extra` replaces the default
    compaction setting (COMPACTION)."""
    env = dict(os.environ, VIGIL_LOG="warn")
    # The data is from 2023: kept forever, and not tiered or rolled up mid-run.
    args = ["--retention-raw", "forever", "--maintenance-interval", "24h"]
    args += [] if result_cache else ["--query-result-cache-bytes", "0"]
    args += COMPACTION if extra is None else extra
    p = subprocess.Popen([os.path.join(BIN, "vigil"), "serve", "--data-dir", data,
                          "--http-addr", f"127.0.0.1:{port}"] + args, env=env, **popen)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return p
        except Exception:
            time.sleep(0.1)
    p.kill()
    raise SystemExit("vigil did not start")


def generate(lp, args):
    """TSBS cpu-only line protocol for --hosts x --hours, in the --order asked for."""
    run([os.path.join(BIN, "vigil-bench"), "generate", "--hosts", str(args.hosts),
         "--seconds", str(args.hours * 3600), "--start", str(START), "--out", lp])
    if args.order == "host":
        # Host by host, each host's rows in time order (a stable sort on the
        # hostname tag, the second comma-separated part of every line).
        run(["sort", "-s", "-t", ",", "-k2,2", "-S", "2G", "-o", lp + ".sorted", lp],
            env=dict(os.environ, LC_ALL="C"))
        os.replace(lp + ".sorted", lp)
    elif args.order == "interleaved":
        interleave(lp, writers=4, batch=5000)


def buffer_bench(args):
    """Dashboard queries over recent data held in the buffer (flush limits raised
    so nothing is flushed)."""
    work = args.work or tempfile.mkdtemp(prefix="vigil-buffer-bench-")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    lp = os.path.join(work, "cpu.lp")
    run(["rm", "-rf", data])
    if not os.path.exists(lp):
        generate(lp, args)
    port = free_port()
    p = start_vigil(data, port, result_cache=False, extra=[
        "--flush-max-rows", "100000000", "--flush-max-bytes", str(16 << 30),
        "--flush-interval", "10h", "--compaction-interval", "100000h"])
    try:
        run([os.path.join(BIN, "vigil-bench"), "ingest", "--file", lp,
             "--url", f"http://127.0.0.1:{port}", "--clients", str(args.clients)])
        rows = metric(port, "vigil_buffer_rows")
        end = START + args.hours * 3600
        a = ts(end - 15 * 60)
        rng = random.Random(42)
        hosts = lambda n: ", ".join(f"'host_{h}'" for h in rng.sample(range(args.hosts), n))
        qs = {
            "1 host, max per minute": f"SELECT date_trunc('minute', time) AS m, max(usage_user) FROM cpu WHERE hostname IN ({hosts(1)}) AND time >= '{a}' GROUP BY 1 ORDER BY 1",
            "8 hosts, 5 metrics per minute": f"SELECT date_trunc('minute', time) AS m, max(usage_user), max(usage_system), max(usage_idle), max(usage_nice), max(usage_iowait) FROM cpu WHERE hostname IN ({hosts(8)}) AND time >= '{a}' GROUP BY 1 ORDER BY 1",
            "all hosts, mean per host": f"SELECT hostname, avg(usage_user) FROM cpu WHERE time >= '{a}' GROUP BY 1 ORDER BY 1",
            "all hosts, count": f"SELECT count(*) FROM cpu WHERE time >= '{a}'",
        }
        print(f"buffer: {rows:.0f} rows ({args.hosts} hosts x {args.hours} h, {args.order} order), "
              f"queries over the last 15 minutes", file=sys.stderr)
        print(f"| dashboard query over the last 15 min, {rows / 1e6:.2f} M rows buffered ({args.order} order) | rows | vigil (ms) |")
        print("|---|---:|---:|")
        for name, sql in qs.items():
            n = vigil_query(port, sql).num_rows
            tv = timed(lambda: vigil_query(port, sql), max(args.runs, 5))
            print(f"{name:32} rows={n:>6}  {tv * 1000:8.1f} ms", file=sys.stderr)
            print(f"| {name} | {n} | {tv * 1000:.1f} |")
    finally:
        p.terminate()
        p.wait()


def interleave(lp, writers, batch):
    """Rewrites the time-ordered file `lp` as `writers` interleaved streams: writer
    g has the hosts h with h % writers == g, in time order but starting a g-th of
    the way through the period (and wrapping round); batches of `batch` lines
    are taken from the writers in turn."""
    streams = [[] for _ in range(writers)]
    with open(lp) as f:
        for line in f:
            host = line.split(",", 2)[1]  # hostname=host_N
            streams[int(host.rsplit("_", 1)[1]) % writers].append(line)
    for g, s in enumerate(streams):
        cut = len(s) * g // writers
        streams[g] = s[cut:] + s[:cut]
    with open(lp + ".tmp", "w") as out:
        pos = [0] * writers
        while any(p < len(s) for p, s in zip(pos, streams)):
            for g, s in enumerate(streams):
                out.writelines(s[pos[g]:pos[g] + batch])
                pos[g] += batch
    os.replace(lp + ".tmp", lp)


def metric(port, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def compact(data):
    """Runs vigil with compaction on until no table-day is due, reporting the time
    taken and vigil's peak RSS."""
    port = free_port()
    p = start_vigil(data, port, extra=["--compaction-interval", "1s"], stderr=subprocess.DEVNULL)
    try:
        rss0 = _rss_kb(p.pid)
        t0 = time.perf_counter()
        written = 0.0
        while True:
            time.sleep(0.5)
            debt = metric(port, "vigil_compaction_debt_bytes")
            written = metric(port, "vigil_compaction_output_bytes_total")
            print(f"\rcompacting: debt {debt / 1e6:8.1f} MB, written {written / 1e6:8.1f} MB, "
                  f"{time.perf_counter() - t0:6.1f} s", end="", file=sys.stderr)
            if debt == 0 and time.perf_counter() - t0 > 2:
                break
        took = time.perf_counter() - t0
        peak = _hwm_kb(p.pid)
        print(f"\ncompaction: {took:.1f} s, {written / 1e6:.1f} MB written, "
              f"vigil RSS {rss0 / 1024:.0f} MB before, peak {peak / 1024:.0f} MB", file=sys.stderr)
    finally:
        p.terminate()
        p.wait()


def _status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _rss_kb(pid):
    return _status_kb(pid, "VmRSS")


def _hwm_kb(pid):
    return _status_kb(pid, "VmHWM")


def vigil_query(port, sql):
    import pyarrow.ipc as ipc
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/sql",
        data=json.dumps({"sql": sql, "format": "arrow"}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        body = r.read()
    return ipc.open_stream(body).read_all()


def duck_query(con, sql):
    res = con.sql(sql)
    return res.to_arrow_table() if hasattr(res, "to_arrow_table") else res.arrow()


def canonical(table):
    """Rows of a result as comparable tuples: columns by position, floats to 9
    significant digits (the engines sum in different orders), sorted."""
    import decimal

    def norm(v):
        if isinstance(v, decimal.Decimal):
            v = float(v)
        if isinstance(v, float):
            return float(f"{v:.9g}")
        if hasattr(v, "timestamp"):
            return v.timestamp()
        return v
    names = sorted(range(table.num_columns), key=lambda i: table.schema.names[i])
    cols = [table.column(i).to_pylist() for i in names]
    return sorted((tuple(norm(c[r]) for c in cols) for r in range(table.num_rows)), key=repr)


def timed(f, runs):
    f()  # warm-up (and the row count check)
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default=None, help="work directory (kept; data reused if present)")
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--order", choices=["time", "host", "interleaved"], default="time",
                    help="write order: all hosts per timestamp; host by host (a backfill); or 4 "
                         "writers, each with a quarter of the hosts in time order, starting a "
                         "quarter of the period apart, their batches interleaved (a replay)")
    ap.add_argument("--buffer", action="store_true",
                    help="dashboard queries over the last 15 minutes while the buffer holds "
                         "--hosts x --hours of unflushed data (no Parquet, no DuckDB)")
    ap.add_argument("--compact", action="store_true",
                    help="compact the ingested data first (timed, peak RSS reported), then query")
    args = ap.parse_args()
    if args.buffer:
        return buffer_bench(args)
    # Queries run on the files as they are: ingest left them (or --compact did).
    COMPACTION.extend(["--compaction-interval", "100000h"])
    import duckdb

    work = args.work or tempfile.mkdtemp(prefix="vigil-query-bench-")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    lp = os.path.join(work, "cpu.lp")
    marker = os.path.join(work, f"loaded-{args.hosts}-{args.hours}-{args.order}")
    if not os.path.exists(marker):
        run(["rm", "-rf", data, lp])
        generate(lp, args)
        port = free_port()
        p = start_vigil(data, port)
        try:
            run([os.path.join(BIN, "vigil-bench"), "ingest", "--file", lp,
                 "--url", f"http://127.0.0.1:{port}", "--clients", str(args.clients)])
        finally:
            p.terminate()
            p.wait()
        os.remove(lp)
        open(marker, "w").close()

    if args.compact:
        compact(data)
    parquet = os.path.join(data, "parquet")
    files = [f for f in os.listdir(parquet) if f.endswith(".parquet")]
    size = sum(os.path.getsize(os.path.join(parquet, f)) for f in files)
    print(f"data: {args.hosts} hosts x {args.hours} h = {args.hosts * args.hours * 360} rows, "
          f"{len(files)} Parquet files, {size / 1e6:.1f} MB", file=sys.stderr)

    cores = os.cpu_count()
    con = duckdb.connect()
    con.execute(f"SET threads = {cores}")
    con.execute(f"CREATE VIEW cpu AS SELECT * FROM read_parquet('{parquet}/*.parquet')")
    # The same rows in DuckDB's own storage: what DuckDB does when it owns the data.
    con.execute("CREATE TABLE cpu_native AS SELECT * FROM cpu")

    def native(sql):
        return sql.replace(" FROM cpu ", " FROM cpu_native ")

    rng = random.Random(42)
    qs = queries(args.hosts, args.hours, rng)
    # Pass 1: every query executed (result cache off), against DuckDB.
    port = free_port()
    p = start_vigil(data, port, result_cache=False)
    results = []
    try:
        for name, sql in qs.items():
            sql, duck_sql = sql if isinstance(sql, tuple) else (sql, sql)
            got, want = vigil_query(port, sql), duck_query(con, duck_sql)
            n_vigil, n_duck = got.num_rows, want.num_rows
            if n_vigil != n_duck:
                raise SystemExit(f"{name}: vigil returned {n_vigil} rows, DuckDB {n_duck}\n{sql}")
            if canonical(got) != canonical(want):
                raise SystemExit(f"{name}: vigil and DuckDB returned different rows\n{sql}")
            native_sql = native(duck_sql)
            assert "cpu_native" in native_sql, native_sql
            if canonical(duck_query(con, native_sql)) != canonical(want):
                raise SystemExit(f"{name}: DuckDB's table and its Parquet scan differ\n{native_sql}")
            tv = timed(lambda: vigil_query(port, sql), args.runs)
            td = timed(lambda: duck_query(con, duck_sql), args.runs)
            tn = timed(lambda: duck_query(con, native_sql), args.runs)
            results.append([name, n_vigil, tv, td, None, tn])
            print(f"{name:24} rows={n_vigil:>8}  vigil {tv * 1000:9.1f} ms  duckdb {td * 1000:9.1f} ms  "
                  f"ratio {tv / td:5.2f}  duckdb table {tn * 1000:9.1f} ms", file=sys.stderr)
    finally:
        p.terminate()
        p.wait()
    # Pass 2: the same queries repeated with the result cache on (a dashboard
    # refreshing over flushed data).
    port = free_port()
    p = start_vigil(data, port, result_cache=True)
    try:
        for r, (name, sql) in zip(results, qs.items()):
            sql = sql[0] if isinstance(sql, tuple) else sql
            r[4] = timed(lambda: vigil_query(port, sql), args.runs)
    finally:
        p.terminate()
        p.wait()

    print(f"| query | rows | vigil (ms) | DuckDB {duckdb.__version__} on the Parquet (ms) | vigil / DuckDB | "
          f"DuckDB native table (ms) | vigil repeated, result cache on (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, tv, td, tc, tn in results:
        print(f"| {name} | {n} | {tv * 1000:.1f} | {td * 1000:.1f} | {tv / td:.2f} | {tn * 1000:.1f} | "
              f"{tc * 1000:.1f} |")


if __name__ == "__main__":
    main()
