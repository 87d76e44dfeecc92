#!/usr/bin/env bash
# Short fuzzing run of every fuzz target (libFuzzer via cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-10}"
# The smoke run builds without optimizations (--dev): arrow and parquet, which the
# write-pipeline target links, take 11 minutes to build optimized on 2 cores and 3
# without, and a 30-second run finds the same shallow bugs either way. Longer
# fuzzing sessions: FUZZ_PROFILE=release FUZZ_SECONDS=3600 bash scripts/fuzz-smoke.sh
profile=()
if [ "${FUZZ_PROFILE:-dev}" = "dev" ]; then
  profile=(--dev)
fi
if rustup toolchain list | grep -q '^nightly'; then
  run() { cargo +nightly fuzz run "${profile[@]}" "$@"; }
else
  # cargo-fuzz needs unstable flags; the stable toolchain accepts them with
  # RUSTC_BOOTSTRAP, without the address sanitizer runtime.
  run() { RUSTC_BOOTSTRAP=1 cargo fuzz run "${profile[@]}" --sanitizer none "$@"; }
fi
for target in $(cargo fuzz list); do
  echo "-- fuzzing $target for ${secs}s"
  run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096
done
