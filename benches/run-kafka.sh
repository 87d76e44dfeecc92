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

cargo build --release --workspace --all-targets >&2
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
now() { date +%s.%N; }
# User + system CPU time of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

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
  peer_secs=$(echo "$peer" | awk -F', ' '{print $NF}')
  peer_msgs_sec=$(echo "$peer" | awk -F', ' '{print $6}')

  port=$(free_port)
  VIGIL_LOG=warn $bin/vigil serve --data-dir "$work/data-$p" --http-addr "127.0.0.1:$port" \
    --flight-addr "127.0.0.1:$(free_port)" --pg-addr "127.0.0.1:$(free_port)" \
    --kafka-brokers "$broker" --kafka-topic metrics --kafka-group bench &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.05; done
  first="" first_rows=0
  while true; do
    rows=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^vigil_kafka_rows_total/ {print $2}' || true)
    rows=${rows:-0}
    if [ -z "$first" ] && [ "$rows" -gt 0 ]; then first=$(now); first_rows=$rows; cpu0=$(cpu_ticks $pid); fi
    [ "$rows" -ge "$lines" ] && break
    sleep 0.05
  done
  last=$(now)
  cpu1=$(cpu_ticks $pid)
  rss_kb=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  kill -TERM $pid; wait $pid || true
  bash scripts/kafka.sh stop "$bdir"
  trap - EXIT
  python3 - "$p" "$first" "$last" "$first_rows" "$lines" "$rss_kb" "$peer_msgs_sec" "$cpu0" "$cpu1" <<'PY'
import os, sys
p, first, last, first_rows, lines, rss, peer_msgs, cpu0, cpu1 = sys.argv[1:]
secs = float(last) - float(first)
cpu = (int(cpu1) - int(cpu0)) / os.sysconf("SC_CLK_TCK")
rows = int(lines) - int(first_rows)
peer_samples = float(peer_msgs) * 500 * 10
print(f'{{"partitions": {p}, "lines": {lines}, "samples": {int(lines) * 10}, '
      f'"vigil_samples_per_sec": {rows * 10 / secs:.0f}, "vigil_cpu_cores": {cpu / secs:.2f}, '
      f'"vigil_samples_per_cpu_sec": {rows * 10 / cpu:.0f}, "vigil_peak_rss_mb": {int(rss) / 1024:.0f}, '
      f'"kafka_consumer_perf_samples_per_sec": {peer_samples:.0f}}}')
PY
done
