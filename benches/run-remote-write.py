#!/usr/bin/env python3
"""Prometheus remote write received side by side: vigil's /api/v1/write and
Prometheus 2.42's own receiver (--web.enable-remote-write-receiver), each fed
the same pre-encoded stream by `vigil-bench remote-write` (--series
node_exporter-like series with 5 labels, --samples-per-request samples per
request, --clients shards that keep each series in time order). For each
receiver: samples/s acknowledged, server CPU seconds from the start of the send
to the server's exit (so vigil's flush of its buffer to Parquet counts) and
samples per server CPU-second, and peak RSS. Each run starts on an empty data directory.

  python3 benches/run-remote-write.py --series 16000 --rounds 250 --clients 4
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, cpu_seconds  # noqa: E402


def wait_http(url, proc, name):
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit(f"{name} did not start")
            time.sleep(0.2)


def measure(name, argv, base_url, ready_path, a, cwd):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    try:
        wait_http(base_url + ready_path, proc, name)
        c0 = cpu_seconds(proc.pid)
        out = subprocess.run(
            [os.path.join(BIN, "vigil-bench"), "remote-write", "--url", base_url, "--series", str(a.series),
             "--samples-per-request", str(a.samples_per_request), "--rounds", str(a.rounds),
             "--clients", str(a.clients)],
            check=True, capture_output=True, text=True).stdout
        # The receiver is stopped and its CPU read at exit, so work done after
        # acknowledging counts: vigil persists its buffer to Parquet on the
        # way out (it would within 5 minutes otherwise); Prometheus keeps its
        # head in memory and WAL, as it does for 2 hours before cutting a block.
        proc.terminate()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = status
        r = json.loads(out.strip().splitlines()[-1])
        r["cpu_s"] = usage.ru_utime + usage.ru_stime - c0
        r["rss"] = usage.ru_maxrss / 1024
        return r
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--series", type=int, default=16000)
    ap.add_argument("--samples-per-request", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=250)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--only", choices=["vigil", "prometheus"])
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vigil-rw-bench-")
    results = {}
    try:
        if a.only != "prometheus":
            port = free_port()
            results["vigil"] = measure(
                "vigil",
                [os.path.join(BIN, "vigil"), "serve", "--data-dir", os.path.join(work, "vigil"),
                 "--http-addr", f"127.0.0.1:{port}", "--flight-addr", f"127.0.0.1:{free_port()}",
                 "--pg-addr", f"127.0.0.1:{free_port()}"],
                f"http://127.0.0.1:{port}", "/health", a, work)
        prom = shutil.which("prometheus")
        if prom and a.only != "vigil":
            config = os.path.join(work, "prometheus.yml")
            with open(config, "w") as f:
                f.write("global:\n  scrape_interval: 1h\n")
            pport = free_port()
            results["Prometheus 2.42"] = measure(
                "Prometheus",
                [prom, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(work, 'prom')}",
                 f"--web.listen-address=127.0.0.1:{pport}", "--web.enable-remote-write-receiver"],
                f"http://127.0.0.1:{pport}", "/-/ready", a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{a.series} series, {a.samples_per_request} samples per request, {a.rounds} rounds, {a.clients} clients")
    print("| receiver | samples/s | server CPU-seconds | samples per CPU-second | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        per_cpu = r["samples"] / r["cpu_s"] if r["cpu_s"] else float("nan")
        print(f"| {name} | {r['samples_per_sec']:,.0f} | {r['cpu_s']:.1f} | {per_cpu:,.0f} | {r['rss']:.0f} MiB |")


if __name__ == "__main__":
    main()
