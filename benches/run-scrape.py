#!/usr/bin/env python3
"""Scraping measured side by side: vigil and Prometheus each scrape the same
--targets exposition targets (node_exporter-sized bodies of --series samples,
values changing every scrape) at --interval seconds, one after the other,
from the same scrape config file. For each: server CPU seconds per wall
second (from /proc), RSS, and samples stored per second (vigil's
vigil_scrape_samples_total, Prometheus's
prometheus_tsdb_head_samples_appended_total), over --seconds after one
interval of warm-up.

The targets are served by one asyncio process on loopback addresses
127.0.0.1-127.0.0.250, four ports each, so every target has its own address.

  python3 benches/run-scrape.py --targets 1000 --series 1500 --interval 10 --seconds 60
"""
import argparse, asyncio, os, random, re, shutil, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIGIL = os.path.join(ROOT, "target", "release", "vigil")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, cpu_seconds, rss_mib  # noqa: E402


def metric(url, name):
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def body(i, series, tick):
    """A node_exporter-like body: counters and gauges with cpu/mode/device labels."""
    out = []
    modes = ["idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user"]
    out.append("# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n# TYPE node_cpu_seconds_total counter\n")
    n = 0
    cpu = 0
    while n < series // 2:
        for m in modes:
            out.append(f'node_cpu_seconds_total{{cpu="{cpu}",mode="{m}"}} {tick * 10.0 + cpu + n * 0.5}\n')
            n += 1
        cpu += 1
    out.append("# TYPE node_network_receive_bytes_total counter\n")
    d = 0
    while n < series:
        out.append(f'node_network_receive_bytes_total{{device="eth{d}"}} {tick * 1000 + d}\n')
        out.append(f'node_filesystem_avail_bytes{{device="/dev/sd{d}",fstype="ext4",mountpoint="/m{d}"}} {1e9 + tick}\n')
        n += 2
        d += 1
    return "".join(out).encode()


async def serve(targets, series):
    ticks = {}

    async def handle(reader, writer, i):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                ticks[i] = ticks.get(i, 0) + 1
                b = body(i, series, ticks[i])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: %d\r\n\r\n" % len(b) + b)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    addresses = []
    servers = []
    base = free_port()
    for i in range(targets):
        host = f"127.0.0.{1 + i // 4}"
        port = base + i % 4
        srv = await asyncio.start_server(lambda r, w, i=i: handle(r, w, i), host, port)
        servers.append(srv)
        addresses.append(f"{host}:{port}")
    print(" ".join(addresses), flush=True)
    await asyncio.Event().wait()


def measure(name, argv, metrics_url, samples_metric, seconds, warmup, cwd):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    try:
        deadline = time.time() + 30
        while True:
            try:
                metric(metrics_url, samples_metric)
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{name} did not start")
                time.sleep(0.2)
        time.sleep(warmup)
        c0, s0, t0 = cpu_seconds(proc.pid), metric(metrics_url, samples_metric), time.time()
        rss = 0.0
        for k in range(seconds):
            time.sleep(1)
            rss = max(rss, rss_mib(proc.pid))
            if k % 10 == 9:
                print(f"  {name}: {k + 1}/{seconds} s", file=sys.stderr, flush=True)
        c1, s1, t1 = cpu_seconds(proc.pid), metric(metrics_url, samples_metric), time.time()
        wall = t1 - t0
        return {"cpu": (c1 - c0) / wall, "rss": rss, "samples": (s1 - s0) / wall, "cpu_s": c1 - c0, "n": s1 - s0}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--series", type=int, default=1500)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=60)
    a = ap.parse_args()
    if a.targets > 1000:
        raise SystemExit("at most 1000 targets (250 loopback addresses x 4 ports)")
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(a.targets), str(a.series)], stdout=subprocess.PIPE, text=True)
    try:
        addresses = server.stdout.readline().split()
        work = tempfile.mkdtemp(prefix="vigil-scrape-bench-")
        config = os.path.join(work, "scrape.yml")
        with open(config, "w") as f:
            f.write(f"global:\n  scrape_interval: {a.interval}s\n  scrape_timeout: {min(a.interval, 10)}s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets:\n")
            for addr in addresses:
                f.write(f"          - '{addr}'\n")
        print(f"{a.targets} targets x {a.series} samples every {a.interval} s = {a.targets * a.series / a.interval:,.0f} samples/s offered", file=sys.stderr)
        results = {}
        port = free_port()
        results["vigil"] = measure(
            "vigil",
            [VIGIL, "serve", "--data-dir", os.path.join(work, "vigil"), "--http-addr", f"127.0.0.1:{port}",
             "--flight-addr", f"127.0.0.1:{free_port()}", "--pg-addr", f"127.0.0.1:{free_port()}", "--scrape-config", config],
            f"http://127.0.0.1:{port}/metrics", "vigil_scrape_samples_total", a.seconds, a.interval + 2, work)
        prom = shutil.which("prometheus")
        if prom:
            pport = free_port()
            results["Prometheus"] = measure(
                "Prometheus",
                [prom, f"--config.file={config}", f"--storage.tsdb.path={os.path.join(work, 'prom')}",
                 f"--web.listen-address=127.0.0.1:{pport}"],
                f"http://127.0.0.1:{pport}/metrics", "prometheus_tsdb_head_samples_appended_total", a.seconds, a.interval + 2, work)
        print("| scraper | samples/s stored | server CPU (cores) | samples per CPU-second | peak RSS |")
        print("|---|---:|---:|---:|---:|")
        for name, r in results.items():
            per_cpu = r["n"] / r["cpu_s"] if r["cpu_s"] else float("nan")
            print(f"| {name} | {r['samples']:,.0f} | {r['cpu']:.2f} | {per_cpu:,.0f} | {r['rss']:.0f} MiB |")
        shutil.rmtree(work, ignore_errors=True)
    finally:
        server.terminate()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
    else:
        main()
