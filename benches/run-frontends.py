#!/usr/bin/env python3
"""Result streaming benchmark: rows/s delivered to a client over Arrow Flight SQL,
the Postgres wire protocol and HTTP, for one 10M-row result.

    python3 benches/run-frontends.py                # 10,000,000 rows, 3 runs each
    python3 benches/run-frontends.py --rows 1000000 --runs 2

The query produces an int64, a float64 and a text column per row from
generate_series, so the numbers measure the front ends (encoding, transport,
client decoding), not storage. Clients: ADBC Flight SQL (Python, Arrow all the way),
pgx v5 (Go; binary results, the driver Grafana uses), psql (C, text results),
psycopg (Python, text), and curl on the HTTP SQL API in Arrow IPC, CSV and JSON
lines. Each run's row count is checked. Needs `bash scripts/install-clients.sh`.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port  # noqa: E402
VIGIL = os.path.join(ROOT, "target", "release", "vigil")
CLIENTS = os.path.join(ROOT, "target", "clients")


def timed(cmd, expect_rows, count_rows, **kw):
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, check=True, **kw)
    elapsed = time.perf_counter() - t
    n = count_rows(out.stdout)
    if n != expect_rows:
        sys.exit(f"{cmd[0]}: {n} rows, expected {expect_rows}: {out.stderr[:500]!r}")
    return elapsed


ADBC = r"""
import sys, adbc_driver_flightsql.dbapi as f
with f.connect(sys.argv[1]) as c, c.cursor() as cur:
    cur.execute(sys.argv[2])
    n = 0
    reader = cur.fetch_record_batch()
    for batch in reader:
        n += batch.num_rows
print(n)
"""

PSYCOPG = r"""
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c, c.cursor() as cur:
    cur.execute(sys.argv[2])
    n = 0
    while True:
        rows = cur.fetchmany(100000)
        if not rows:
            break
        n += len(rows)
print(n)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated clients to skip")
    args = ap.parse_args()
    http, flight, pg = free_port(), free_port(), free_port()
    data = tempfile.mkdtemp(prefix="vigil-bench-frontends-")
    server = subprocess.Popen(
        [VIGIL, "serve", "--data-dir", data, "--http-addr", f"127.0.0.1:{http}",
         "--flight-addr", f"127.0.0.1:{flight}", "--pg-addr", f"127.0.0.1:{pg}",
         "--query-result-cache-bytes", "0"],
        env={**os.environ, "VIGIL_LOG": "warn"},
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", pg), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        n = args.rows
        sql = (f"SELECT value AS id, value * 0.5 AS v, concat('host_', value % 1000) AS host "
               f"FROM generate_series(1, {n})")
        pg_dsn = f"host=127.0.0.1 port={pg} user=postgres dbname=vigil"
        lines = lambda out: len(out.splitlines())
        first_line = lambda out: int(out.split()[0])
        http_url = f"http://127.0.0.1:{http}/api/v1/sql"

        def curl(fmt):
            body = json.dumps({"sql": sql, "format": fmt})
            return ["curl", "-sf", "-XPOST", http_url, "-H", "Content-Type: application/json",
                    "-d", body]

        def arrow_rows(out):
            import pyarrow.ipc
            return pyarrow.ipc.open_stream(out).read_all().num_rows

        pgx_queries = json.dumps([{"sql": sql}])
        clients = {
            "Flight SQL (ADBC, Python)": (
                [sys.executable, "-c", ADBC, f"grpc://127.0.0.1:{flight}", sql], first_line, {}),
            "pgwire (pgx v5, Go, binary)": (
                [os.path.join(CLIENTS, "pgx-client"), "--count",
                 f"postgres://postgres@127.0.0.1:{pg}/vigil?sslmode=disable"],
                first_line, {"input": pgx_queries.encode()}),
            "pgwire (psql, text)": (
                ["psql", pg_dsn, "-X", "-A", "-t", "-c", sql], lines, {}),
            "pgwire (psycopg, Python, text)": (
                [sys.executable, "-c", PSYCOPG, pg_dsn, sql], first_line, {}),
            "HTTP Arrow IPC (curl)": (curl("arrow"), arrow_rows, {}),
            "HTTP CSV (curl)": (curl("csv"), lambda out: lines(out) - 1, {}),
            "HTTP JSON lines (curl)": (curl("jsonl"), lines, {}),
            "HTTP JSON array (curl)": (curl("json"), lambda out: out.count(b'{"id"'), {}),
        }
        skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        def peak_rss_mb():
            with open(f"/proc/{server.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) // 1024
            return -1

        print(f"| client | median s ({args.runs} runs) | rows/s | server peak RSS so far (MiB) |")
        print("|---|---:|---:|---:|")
        for name, (cmd, count, kw) in clients.items():
            if any(s in name for s in skip):
                continue
            times = [timed(cmd, n, count, **kw) for _ in range(args.runs)]
            med = statistics.median(times)
            print(f"| {name} | {med:.2f} | {n / med / 1e6:.2f} M | {peak_rss_mb()} |", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
