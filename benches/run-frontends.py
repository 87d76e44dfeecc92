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

    python3 benches/run-frontends.py --postgres     # also the pgwire clients against
                                                    # a real PostgreSQL, same query

With --postgres, a PostgreSQL server (scripts/postgres.sh) answers the same SQL to
the same pgwire clients, side by side. pgx decodes every value twice over: into
typed variables by column type (`Scan`, as Grafana's data frames and most Go code
read rows) and through `rows.Values()` (an interface value per column per row).
"""
import argparse
import json
import os
import resource
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


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd, expect_rows, count_rows, **kw):
    """Wall seconds and the client's CPU seconds of one run."""
    cpu = children_cpu_s()
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, check=True, **kw)
    elapsed = time.perf_counter() - t
    cpu = children_cpu_s() - cpu
    n = count_rows(out.stdout)
    if n != expect_rows:
        sys.exit(f"{cmd[0]}: {n} rows, expected {expect_rows}: {out.stderr[:500]!r}")
    return elapsed, cpu


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


def postgres_cpu_s(pg_dir):
    """CPU seconds of every process of the PostgreSQL server in pg_dir, the
    exited backends included (their time is added to the postmaster's children)."""
    with open(os.path.join(pg_dir, "data", "postmaster.pid")) as f:
        pid = int(f.readline())
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    # utime, stime, and cutime, cstime of reaped children.
    ticks = sum(int(parts[i]) for i in (11, 12, 13, 14))
    for child in os.listdir("/proc"):
        if child.isdigit():
            try:
                with open(f"/proc/{child}/stat") as f:
                    c = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(c[1]) == pid:
                ticks += int(c[11]) + int(c[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated clients to skip")
    ap.add_argument("--postgres", action="store_true",
                    help="also run the pgwire clients against a real PostgreSQL")
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
        # Written so PostgreSQL reads it with the same types: bigint, float8, text.
        sql = (f"SELECT value AS id, value * 0.5::float8 AS v, "
               f"concat('host_', value % 1000) AS host "
               f"FROM generate_series(1::bigint, {n}) AS value")
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

        pgx_queries = json.dumps([{"sql": sql}]).encode()

        def pgwire_clients(server, port, db):
            dsn = f"host=127.0.0.1 port={port} user=postgres dbname={db}"
            url = f"postgres://postgres@127.0.0.1:{port}/{db}?sslmode=disable"
            pgx = os.path.join(CLIENTS, "pgx-client")
            return {
                f"{server} pgwire (pgx v5, Go, binary, Scan)": (
                    [pgx, "--count", url], first_line, {"input": pgx_queries}),
                f"{server} pgwire (pgx v5, Go, binary, Values)": (
                    [pgx, "--count-values", url], first_line, {"input": pgx_queries}),
                f"{server} pgwire (psql, text)": (
                    ["psql", dsn, "-X", "-A", "-t", "-c", sql], lines, {}),
                f"{server} pgwire (psycopg, Python, text)": (
                    [sys.executable, "-c", PSYCOPG, dsn, sql], first_line, {}),
            }

        clients = {
            "Flight SQL (ADBC, Python)": (
                [sys.executable, "-c", ADBC, f"grpc://127.0.0.1:{flight}", sql], first_line, {}),
            **pgwire_clients("vigil", pg, "vigil"),
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

        def server_cpu_s():
            with open(f"/proc/{server.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        # The client's CPU seconds bound what any server can deliver to it: a
        # single-threaded client that needs c CPU-seconds for n rows cannot take
        # more than n/c rows/s, however fast the server is.
        print(f"| client | median s ({args.runs} runs) | rows/s | server CPU s per run "
              f"| client CPU s per run | client's own limit (rows/s at 1 core) "
              f"| server peak RSS so far (MiB) |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        def measure(clients, cpu_seconds, rss):
            for name, (cmd, count, kw) in clients.items():
                if any(s in name for s in skip):
                    continue
                cpu = cpu_seconds()
                runs = [timed(cmd, n, count, **kw) for _ in range(args.runs)]
                cpu = (cpu_seconds() - cpu) / args.runs
                med = statistics.median(t for t, _ in runs)
                client = statistics.median(c for _, c in runs)
                print(f"| {name} | {med:.2f} | {n / med / 1e6:.2f} M | {cpu:.2f} | {client:.2f} "
                      f"| {n / client / 1e6:.2f} M | {rss()} |", flush=True)

        measure(clients, server_cpu_s, peak_rss_mb)
        if args.postgres:
            # vigil stops first, so the two servers never share the machine.
            server.terminate()
            server.wait()
            pg_port = free_port()
            pg_dir = tempfile.mkdtemp(prefix="vigil-bench-postgres-")
            os.chmod(pg_dir, 0o755)
            script = os.path.join(ROOT, "scripts", "postgres.sh")
            subprocess.run(["bash", script, "start", pg_dir, str(pg_port)], check=True)
            try:
                measure(pgwire_clients("PostgreSQL", pg_port, "postgres"),
                        lambda: postgres_cpu_s(pg_dir), lambda: "-")
            finally:
                subprocess.run(["bash", script, "stop", pg_dir], check=False)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
