#!/usr/bin/env bash
# Kafka ingest benchmark: end-to-end samples/s from a real Kafka broker into vigil,
# with 1, 2 and 4 partitions, beside Kafka's own consumer (ConsumerPerformance,
# which only reads the messages) on the same topic as the ceiling.
#
#   benches/run-kafka.sh                       # defaults below; env vars override
#   HOSTS=1000 SECS=10800 PARTITIONS="1 2 4" benches/run-kafka.sh
#
# For each partition count: a fresh broker (scripts/kafka.sh), the TSBS cpu-only
# file produced into a fresh topic (500 lines per message, round-robin over the
# partitions), then `vigil serve --kafka-brokers` started on an empty data dir; the
# time from its first stored row to the last (vigil_kafka_rows_total) gives the rate.
# Every row is in the WAL (fsynced) when counted; offsets follow the flushes.
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${HOSTS:-1000}
SECS=${SECS:-10800}
PARTITIONS=${PARTITIONS:-"1 2 4"}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"

# Only the two binaries used (a workspace build with all targets unifies other
# features and rebuilds DataFusion).
cargo build --release -p vigil -p vigil-benches --bin vigil --bin vigil-bench >&2
bin=./target/release
bash scripts/kafka.sh provision
jars="$PWD/target/kafka/${KAFKA_VERSION:-4.1.1}"
if [ ! -f "$jars/kafka-tools-${KAFKA_VERSION:-4.1.1}.jar" ]; then
  mvn -q -B dependency:copy -Dartifact="org.apache.kafka:kafka-tools:${KAFKA_VERSION:-4.1.1}" \
    -DoutputDirectory="$jars" >&2
fi
[ -f "$work/cpu.lp" ] || $bin/vigil-bench generate --hosts "$HOSTS" --seconds "$SECS" --out "$work/cpu.lp"
lines=$(( HOSTS * (SECS / 10) ))
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for p in $PARTITIONS; do
  bdir="$work/kafka-$p"
  rm -rf "$bdir" "$work/data-$p"
  broker=$(bash scripts/kafka.sh start "$bdir" | sed -n 's/^BROKER=//p')
  trap 'bash scripts/kafka.sh stop "$bdir"' EXIT
  $bin/vigil-bench kafka-produce --file "$work/cpu.lp" --brokers "$broker" --partitions "$p" >&2
  messages=$(( (lines + 499) / 500 ))

  # The ceiling: Kafka's own consumer reading (not parsing, not storing) the topic.
  peer=$(java -Xmx1g -cp "$jars/*" org.apache.kafka.tools.ConsumerPerformance \
    --bootstrap-server "$broker" --topic metrics --messages "$messages" --group "perf-$p" \
    --hide-header 2>/dev/null | tail -1)
  # start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, ...
  peer_msgs_sec=$(echo "$peer" | awk -F', ' '{print $6}')

  port=$(free_port)
  VIGIL_LOG=warn $bin/vigil serve --data-dir "$work/data-$p" --http-addr "127.0.0.1:$port" \
    --flight-addr "127.0.0.1:$(free_port)" --pg-addr "127.0.0.1:$(free_port)" \
    --kafka-brokers "$broker" --kafka-topic metrics --kafka-group bench &
  pid=$!
  trap 'kill $pid 2>/dev/null || true; bash scripts/kafka.sh stop "$bdir"' EXIT
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.05; done
  # Polls vigil_kafka_rows_total every 20 ms on one kept-alive connection (a curl
  # per poll cost the machine a tenth of a core) and times the span from the
  # first stored row to the last, with vigil's and the broker's CPU over it.
  python3 - "$p" "$port" "$pid" "$(cat "$bdir/pid")" "$lines" "$peer_msgs_sec" <<'PY'
import http.client, os, sys, time
p, port, pid, broker, lines, peer_msgs = sys.argv[1:]
lines = int(lines)
tck = os.sysconf("SC_CLK_TCK")
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tck
conn = http.client.HTTPConnection("127.0.0.1", int(port))
def rows():
    conn.request("GET", "/metrics")
    for line in conn.getresponse().read().decode().splitlines():
        if line.startswith("vigil_kafka_rows_total"):
            return int(float(line.split()[1]))
    return 0
first = None
while True:
    r = rows()
    if first is None and r > 0:
        first, first_rows, v0, b0 = time.monotonic(), r, cpu(pid), cpu(broker)
    if r >= lines:
        break
    time.sleep(0.02)
secs = max(time.monotonic() - first, 1e-3)
vcpu, bcpu = max(cpu(pid) - v0, 0.01), cpu(broker) - b0
rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM"))
n = (lines - first_rows) * 10
print(f'{{"partitions": {p}, "lines": {lines}, "samples": {lines * 10}, '
      f'"vigil_samples_per_sec": {n / secs:.0f}, "vigil_cpu_cores": {vcpu / secs:.2f}, '
      f'"vigil_samples_per_cpu_sec": {n / vcpu:.0f}, "broker_cpu_cores": {bcpu / secs:.2f}, '
      f'"vigil_peak_rss_mb": {rss / 1024:.0f}, '
      f'"kafka_consumer_perf_samples_per_sec": {float(peer_msgs) * 500 * 10:.0f}}}')
PY
  kill -TERM $pid; wait $pid || true
  bash scripts/kafka.sh stop "$bdir"
  trap - EXIT
done
