#!/usr/bin/env bash
# Ingest + storage benchmark, vigil side by side with Prometheus TSDB (promtool).
#
#   benches/run-ingest.sh                 # defaults below; env vars override
#   HOSTS=1000 SECS=10800 CLIENTS=4 benches/run-ingest.sh
#
# 1. generates TSBS cpu-only data (line protocol, and OpenMetrics for promtool),
# 2. starts `vigil serve` on a free loopback port and sends the data with CLIENTS
#    concurrent HTTP clients (every request is acknowledged after its WAL fsync),
# 3. stops vigil (SIGTERM flushes the buffer) and measures Parquet bytes/sample and
#    the server's peak RSS,
# 4. if PROMTOOL points at a promtool binary, builds Prometheus TSDB blocks from the
#    same samples and measures their bytes/sample.
set -euo pipefail
cd "$(dirname "$0")/.."
HOSTS=${HOSTS:-100}
SECS=${SECS:-7200}
CLIENTS=${CLIENTS:-4}
BATCH=${BATCH:-5000}
PROMTOOL=${PROMTOOL:-$(command -v promtool || true)}
work=${WORK:-$(mktemp -d)}
mkdir -p "$work"

# Only the two binaries used (a workspace build with all targets unifies other
# features and rebuilds DataFusion).
cargo build --release -p vigil -p vigil-benches --bin vigil --bin vigil-bench >&2
bin=./target/release
$bin/vigil-bench generate --hosts "$HOSTS" --seconds "$SECS" --out "$work/cpu.lp"
samples=$(( HOSTS * (SECS / 10) * 10 ))

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rm -rf "$work/data"
VIGIL_LOG=warn $bin/vigil serve --data-dir "$work/data" --http-addr "127.0.0.1:$port" &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

# vigil's user + system CPU over the send (clock ticks), for samples per CPU-second.
cpu0=$(awk '{print $14 + $15}' /proc/$pid/stat)
result=$($bin/vigil-bench ingest --file "$work/cpu.lp" --url "http://127.0.0.1:$port" --clients "$CLIENTS" --batch-lines "$BATCH")
cpu1=$(awk '{print $14 + $15}' /proc/$pid/stat)
echo "ingest: $result"
python3 - "$cpu0" "$cpu1" "$samples" <<'PY'
import os, sys
cpu0, cpu1, samples = sys.argv[1:]
cpu = max(int(cpu1) - int(cpu0), 1) / os.sysconf("SC_CLK_TCK")
print(f"vigil CPU over the send: {cpu:.1f} s = {int(samples) / cpu / 1e6:.2f} M samples per CPU-second")
PY
fsyncs=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^vigil_wal_fsyncs_total/ {print $2}')
rss_kb=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
kill -TERM $pid; wait $pid || true
trap - EXIT
parquet=$(find "$work/data/parquet" -name '*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s}')
lp=$(stat -c %s "$work/cpu.lp")
echo "samples: $samples  wal fsyncs: $fsyncs  peak RSS: $((rss_kb / 1024)) MiB"
echo "vigil parquet: $parquet bytes = $(python3 -c "print(round($parquet/$samples, 3))") B/sample (line protocol input: $(python3 -c "print(round($lp/$samples, 1))") B/sample)"

if [ -n "$PROMTOOL" ]; then
  $bin/vigil-bench generate --hosts "$HOSTS" --seconds "$SECS" --format openmetrics --out "$work/cpu.om"
  rm -rf "$work/prom"
  start=$(date +%s.%N)
  "$PROMTOOL" tsdb create-blocks-from openmetrics "$work/cpu.om" "$work/prom" >/dev/null
  end=$(date +%s.%N)
  prom=$(du -sb "$work/prom" | cut -f1)
  echo "prometheus tsdb: $prom bytes = $(python3 -c "print(round($prom/$samples, 3))") B/sample (promtool took $(python3 -c "print(round($end-$start,1))") s)"
fi
