#!/usr/bin/env python3
"""Alert evaluation measured: how many SQL rules one node evaluates per minute,
what each costs, and how soon a notification reaches a webhook after its
condition starts to hold.

Steps: start `vigil serve` with --rules 2000 alert rules (one per host, in
groups of 100, every --interval seconds) over a TSBS-style cpu table of --hosts
hosts (a sample every 10 s for the last 10 minutes, kept fresh while running),
plus one rule on a `flag` table every second, routed to a webhook receiver on
loopback. Run --seconds, then read vigil_rule_evaluations and failures from
/metrics, per-rule evaluation times from system.rules and the server's CPU
time from /proc. Then flip `flag` to 1 five times and measure the time from the
write's acknowledgement to the webhook receiving the firing notification.

  python3 benches/run-alerts.py --rules 2000 --interval 10 --seconds 60
"""
import argparse, http.server, json, os, random, socket, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import free_port, cpu_seconds  # noqa: E402
VIGIL = os.path.join(ROOT, "target", "release", "vigil")


def post(url, body, ctype="text/plain"):
    req = urllib.request.Request(url, data=body.encode(), method="POST", headers={"content-type": ctype})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def sql(base, q):
    return json.loads(post(base + "/api/v1/sql", json.dumps({"sql": q, "format": "json"}), "application/json"))


received = []


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        received.append((time.time(), json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


def write_cpu(base, hosts, start, end):
    lines = []
    for t in range(start, end, 10):
        for h in range(hosts):
            lines.append(f"cpu,hostname=host_{h} usage_user={random.uniform(0, 100):.2f},usage_system={random.uniform(0, 50):.2f} {t}")
    post(base + "/api/v3/write_lp?db=x&precision=s", "\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=2000)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--interval", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--firing", action="store_true",
                    help="every rule fires (threshold -1, no `for`): one alert per rule, each its own group, sent to the webhook")
    a = ap.parse_args()
    hook_port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", hook_port), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as d:
        rules = os.path.join(d, "rules")
        os.makedirs(rules)
        per_group = 100
        for g in range(0, a.rules, per_group):
            with open(os.path.join(rules, f"g{g // per_group:04}.yml"), "w") as f:
                f.write(f"groups:\n  - name: hosts{g // per_group}\n    interval: {a.interval}s\n    rules:\n")
                for r in range(g, min(g + per_group, a.rules)):
                    host = f"host_{r % a.hosts}"
                    f.write(f"      - alert: HighCpu{r}\n        sql: SELECT hostname, avg(usage_user) AS value FROM cpu "
                            f"WHERE time > now() - interval '1 minute' AND hostname = '{host}' "
                            + ("GROUP BY hostname HAVING avg(usage_user) > -1\n" if a.firing else
                               "GROUP BY hostname HAVING avg(usage_user) > 99.9\n        for: 1m\n"))
        with open(os.path.join(rules, "flag.yml"), "w") as f:
            f.write("groups:\n  - name: flag\n    interval: 1s\n    rules:\n      - alert: Flag\n"
                    "        sql: SELECT name, value FROM (SELECT name, value, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn FROM flag) WHERE rn = 1 AND value > 0\n")
        routing = os.path.join(d, "alerting.yml")
        with open(routing, "w") as f:
            f.write(f"route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: http://127.0.0.1:{hook_port}/\n")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = dict(os.environ, VIGIL_LOG="error", VIGIL_RETENTION_RAW="forever")
        proc = subprocess.Popen([VIGIL, "serve", "--data-dir", os.path.join(d, "data"), "--http-addr", f"127.0.0.1:{port}",
                                 "--flight-addr", f"127.0.0.1:{free_port()}", "--pg-addr", f"127.0.0.1:{free_port()}",
                                 "--rules-dir", rules, "--alerting-config", routing], env=env)
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(base + "/health", timeout=1)
                    break
                except Exception:
                    time.sleep(0.1)
            now = int(time.time())
            write_cpu(base, a.hosts, now - 600, now)
            post(base + "/api/v3/write_lp?db=x", "flag,name=f value=0")

            def metric(name):
                for line in urllib.request.urlopen(base + "/metrics").read().decode().splitlines():
                    if line.startswith(name + " "):
                        return float(line.split()[1])
                return 0.0

            time.sleep(a.interval + 2)
            e0, f0, c0, t0 = metric("vigil_rule_evaluations_total"), metric("vigil_rule_evaluation_failures_total"), cpu_seconds(proc.pid), time.time()
            last = int(time.time())
            while time.time() - t0 < a.seconds:
                time.sleep(5)
                now = int(time.time())
                write_cpu(base, a.hosts, last, now)
                last = now
            e1, f1, c1, t1 = metric("vigil_rule_evaluations_total"), metric("vigil_rule_evaluation_failures_total"), cpu_seconds(proc.pid), time.time()
            per_min = (e1 - e0) / (t1 - t0) * 60
            stats = sql(base, "SELECT approx_percentile_cont(evaluation_seconds, 0.5) AS p50, "
                              "approx_percentile_cont(evaluation_seconds, 0.99) AS p99, max(evaluation_seconds) AS mx "
                              "FROM system.rules WHERE group_name <> 'flag'")[0]
            print(f"rules: {a.rules} (+1 flag rule at 1 s) every {a.interval} s over {a.hosts} hosts")
            print(f"evaluations: {per_min:,.0f}/min ({(e1 - e0):,.0f} in {t1 - t0:.0f} s), failures {f1 - f0:.0f}")
            print(f"server CPU: {(c1 - c0) / (t1 - t0):.2f} cores; {(c1 - c0) / max(e1 - e0, 1) * 1e3:.2f} ms CPU per evaluation")
            print(f"per-rule evaluation time: p50 {stats['p50'] * 1e3:.2f} ms, p99 {stats['p99'] * 1e3:.2f} ms, max {stats['mx'] * 1e3:.2f} ms")
            firing = sql(base, "SELECT count(*) AS n FROM system.alerts WHERE state = 'firing'")[0]["n"]
            print(f"firing alerts: {firing}; webhook messages received: {len(received)}")
            latencies = []
            for i in range(5):
                received.clear()
                post(base + "/api/v3/write_lp?db=x", "flag,name=f value=1")
                acked = time.time()
                while not any(b["status"] == "firing" and b["alerts"][0]["labels"].get("alertname") == "Flag" for _, b in received):
                    if time.time() - acked > 30:
                        sys.exit("no notification within 30 s")
                    time.sleep(0.005)
                got = min(t for t, b in received if b["status"] == "firing")
                latencies.append(got - acked)
                post(base + "/api/v3/write_lp?db=x", "flag,name=f value=0")
                while not any(b["status"] == "resolved" for _, b in received):
                    time.sleep(0.01)
                time.sleep(random.uniform(0.1, 0.9))
            latencies.sort()
            print("write ack -> firing notification at the webhook (interval 1 s, for 0): "
                  + ", ".join(f"{x:.2f}" for x in latencies) + " s (target <= interval + 1 s = 2 s)")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
