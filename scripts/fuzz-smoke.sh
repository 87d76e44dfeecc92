#!/usr/bin/env bash
# Short fuzzing run of every fuzz target: libFuzzer (libfuzzer-sys), coverage
# guided, built with the stable toolchain and the instrumentation flags cargo-fuzz
# passes with `--sanitizer none`. No nightly toolchain and no cargo-fuzz install
# (about 3 minutes of CI): Rust code is memory-safe without AddressSanitizer, and
# what a smoke run finds is panics, overflows and hangs (an input that runs
# over 10 s fails it). `cargo fuzz run TARGET`
# (cargo-fuzz, nightly) works on the same crate for longer sessions with ASan.
#   FUZZ_SECONDS=10 (per target)   FUZZ_PROFILE=dev|release
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${FUZZ_SECONDS:-10}"
triple=$(rustc -vV | sed -n 's/^host: //p')
flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" -Cllvm-args=-sanitizer-coverage-stack-depth --cfg fuzzing -Cdebug-assertions"
# The smoke run builds without optimizations: arrow and parquet, which the
# write-pipeline target links, take 11 minutes to build optimized on 2 cores and 3
# without, and a short run finds the same shallow bugs either way. Longer sessions:
# FUZZ_PROFILE=release FUZZ_SECONDS=3600 bash scripts/fuzz-smoke.sh
profile=debug
args=()
if [ "${FUZZ_PROFILE:-dev}" = "release" ]; then
  profile=release
  args=(--release)
  flags+=" -Ccodegen-units=1"
fi
# --target keeps the flags off build scripts and proc macros.
RUSTFLAGS="$flags" cargo build --target "$triple" "${args[@]}" --bins
targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^vigil-fuzz$')
for target in $targets; do
  echo "-- fuzzing $target for ${secs}s"
  mkdir -p "corpus/$target" "artifacts/$target"
  "target/$triple/$profile/$target" "corpus/$target" -artifact_prefix="artifacts/$target/" \
    -max_total_time="$secs" -rss_limit_mb=4096 -timeout=10
done
