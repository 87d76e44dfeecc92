#!/usr/bin/env bash
# Short fuzzing run of every fuzz target (libFuzzer via cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-30}"
if rustup toolchain list | grep -q '^nightly'; then
  run() { cargo +nightly fuzz run "$@"; }
else
  # cargo-fuzz needs unstable flags; the stable toolchain accepts them with
  # RUSTC_BOOTSTRAP, without the address sanitizer runtime.
  run() { RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$@"; }
fi
for target in $(cargo fuzz list); do
  echo "-- fuzzing $target for ${secs}s"
  run "$target" -- -max_total_time="$secs" -rss_limit_mb=4096
done
