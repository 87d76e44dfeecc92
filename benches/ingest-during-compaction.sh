#!/usr/bin/env bash
# Ingest rate with compaction running vs off: 1000 hosts x 6 h written host by host
# into a copy of the compacted 24 h data of the host-order query bench
# (`benches/run-query.py --order host --work /tmp/qb24-host --compact`), so the new
# files overlap its windows. Prints each run's rate and vigil's peak RSS.
set -e
B="$(cd "$(dirname "$0")/.." && pwd)/target/release"
LP=/tmp/icmp/cpu6h.lp
mkdir -p /tmp/icmp
if [ ! -f $LP ]; then
  $B/vigil-bench generate --hosts 1000 --seconds 21600 --start 1699920000 --out $LP.raw
  LC_ALL=C sort -s -t , -k2,2 -S 2G -o $LP $LP.raw; rm $LP.raw
fi
for mode in off on; do
  rm -rf /tmp/icmp/data-$mode; cp -r /tmp/qb24-host/data /tmp/icmp/data-$mode
  if [ $mode = on ]; then ci=1s; else ci=100000h; fi
  port=$((19000 + RANDOM % 1000))
  VIGIL_LOG=info $B/vigil serve --data-dir /tmp/icmp/data-$mode --http-addr 127.0.0.1:$port --flight-addr 127.0.0.1:$((port+1000)) --pg-addr 127.0.0.1:$((port+2000)) --compaction-interval $ci > /tmp/icmp/server-$mode.log 2>&1 &
  pid=$!
  sleep 2
  echo "compaction $mode: $($B/vigil-bench ingest --file $LP --url http://127.0.0.1:$port --clients 4)"
  grep -c '"compacted"\|compacted' /tmp/icmp/server-$mode.log || true
  echo "peak RSS: $(grep VmHWM /proc/$pid/status)"
  kill $pid; wait $pid || true
done
