#!/usr/bin/env python3
"""The retention tiers measured: bytes per sample in each tier, and one query
served hot, cold-uncached and cold-cached from a real S3-compatible server (moto's,
scripts/s3.sh, on loopback), with the S3 requests it made.

Steps: generate TSBS cpu-only data (--hosts x --hours, ending two days ago), write
it with `vigil write`, restart (flush), run the query 5 times on hot files, run
maintenance (rollups + tiering to S3), restart (flush the rollups, empty the read
cache), run the query once (cold, uncached) and 5 times more (cold, cached),
then print the numbers and a storage projection for 10 M series at a 10 s
interval, one year, with the default retention (raw 7 d, 10 m 30 d, 1 h 1 y).

Then the same hourly query written with time_bucket, read from raw rows and
with rollup reads (the 1-hour rollup), cold cached both.

  python3 benches/run-tiers.py --hosts 100 --hours 24
"""
import argparse, json, os, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port  # noqa: E402
BIN = os.path.join(ROOT, "target", "release")
QUERY = ("SELECT date_trunc('hour', time) AS hour, hostname, avg(usage_user) AS u, "
         "max(usage_system) AS s FROM cpu GROUP BY 1, 2 ORDER BY 1, 2")
# The same with time_bucket, which rollup reads answer from the 1-hour rollup.
BUCKETED = ("SELECT time_bucket('1 hour', time) AS hour, hostname, avg(usage_user) AS u, "
            "max(usage_system) AS s FROM cpu GROUP BY 1, 2 ORDER BY 1, 2")


def wait(url):
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"{url} did not answer")


def post(url, body=b"", ctype="application/json"):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=3600) as r:
        return r.read()


def metrics(url):
    out = {}
    for line in urllib.request.urlopen(url + "/metrics").read().decode().splitlines():
        if line.startswith("vigil_cold_requests_total{"):
            kind = line.split('kind="')[1].split('"')[0]
            out[kind] = float(line.rsplit(" ", 1)[1])
    return out


def sql(url, q):
    return json.loads(post(url + "/api/v1/sql", json.dumps({"sql": q, "format": "json"}).encode()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--hours", type=int, default=24)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vigil-tiers-bench-")
    s3_port, http = free_port(), free_port()
    s3 = subprocess.Popen(["bash", os.path.join(ROOT, "scripts/s3.sh"), "serve", str(s3_port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = None
    try:
        for _ in range(100):
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{s3_port}/bench", method="PUT")
                urllib.request.urlopen(req, timeout=1)
                break
            except Exception:
                time.sleep(0.2)
        cfg = os.path.join(work, "vigil.toml")
        with open(cfg, "w") as f:
            f.write(f"""[cold_tier]
url = "s3://bench/node1"
endpoint = "http://127.0.0.1:{s3_port}"
region = "us-east-1"
access_key_id = "bench"
secret_access_key = "bench"
allow_http = true
[retention]
raw = "forever"
[maintenance]
interval = "24h"
""")
        url = f"http://127.0.0.1:{http}"

        def start(rollup_reads=False):
            p = subprocess.Popen([os.path.join(BIN, "vigil"), "serve", "--config", cfg,
                                  "--data-dir", os.path.join(work, "data"), "--http-addr", f"127.0.0.1:{http}",
                                  "--flight-addr", f"127.0.0.1:{free_port()}", "--pg-addr", f"127.0.0.1:{free_port()}",
                                  "--query-result-cache-bytes", "0"],
                                 env=dict(os.environ, VIGIL_LOG="warn",
                                          VIGIL_ROLLUP_READS=str(rollup_reads).lower()))
            wait(url + "/health")
            return p

        def stop(p):
            p.terminate()
            p.wait()

        end = (int(time.time()) - 2 * 86400) // 3600 * 3600
        lp = os.path.join(work, "cpu.lp")
        subprocess.run([os.path.join(BIN, "vigil-bench"), "generate", "--hosts", str(args.hosts),
                        "--seconds", str(args.hours * 3600), "--start", str(end - args.hours * 3600),
                        "--out", lp], check=True)
        server = start()
        subprocess.run([os.path.join(BIN, "vigil"), "write", lp, "--url", url], check=True)
        stop(server)
        server = start()
        rows = sql(url, "SELECT count(*) AS n FROM cpu")[0]["n"]
        samples = rows * 10

        def timed(label, n, query=QUERY):
            ms = []
            before = metrics(url)
            for _ in range(n):
                t = time.perf_counter()
                sql(url, query)
                ms.append((time.perf_counter() - t) * 1000)
            after = metrics(url)
            reqs = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}
            ms.sort()
            print(f"{label:22} median {ms[len(ms) // 2]:8.1f} ms  min {ms[0]:8.1f} ms  "
                  f"S3 requests per run {json.dumps({k: v / n for k, v in reqs.items() if v})}")

        files = sql(url, "SELECT tier, sum(size_bytes) AS b FROM system.files GROUP BY tier")
        print(f"{rows} rows, {samples} samples; hot files: {files}")
        timed("hot (local Parquet)", args.runs)
        t = time.perf_counter()
        report = json.loads(post(url + "/api/v1/admin/maintenance"))
        print(f"maintenance {time.perf_counter() - t:.1f} s: {report}")
        stop(server)
        server = start()
        timed("cold, uncached", 1)
        timed("cold, cached", args.runs)
        raw_answer = sql(url, BUCKETED)
        timed("bucketed, raw rows", args.runs, BUCKETED)
        stop(server)
        server = start(rollup_reads=True)
        timed("bucketed, rollup reads", args.runs, BUCKETED)
        assert len(sql(url, BUCKETED)) == len(raw_answer), "rollup reads changed the answer"
        by_table = sql(url, "SELECT table_name, tier, sum(size_bytes) AS b, sum(rows) AS r "
                            "FROM system.files GROUP BY 1, 2 ORDER BY 1, 2")
        sizes = {r["table_name"]: r["b"] for r in by_table}
        rollup_rows = {r["table_name"]: r["r"] for r in by_table}
        raw_b = sizes["cpu"] / samples
        # A rollup row holds one series' bucket of all 10 fields.
        b10 = sizes["rollup_10m.cpu"] / (rollup_rows["rollup_10m.cpu"] * 10)
        b1h = sizes["rollup_1h.cpu"] / (rollup_rows["rollup_1h.cpu"] * 10)
        print(f"tiers: {by_table}")
        print(f"bytes per raw sample {raw_b:.2f}; per field-bucket: 10m {b10:.2f}, 1h {b1h:.2f}")
        series = 10_000_000
        raw = series * 8640 * 7 * raw_b
        r10 = series * 144 * 30 * b10
        r1h = series * 24 * 365 * b1h
        tb = 1e12
        print(f"projection, 10 M series every 10 s: raw 7 d {raw / tb:.2f} TB, 10 m 30 d {r10 / tb:.2f} TB, "
              f"1 h 1 y {r1h / tb:.2f} TB, total {(raw + r10 + r1h) / tb:.2f} TB")
    finally:
        if server:
            server.terminate()
            server.wait()
        s3.terminate()


if __name__ == "__main__":
    main()
