#!/usr/bin/env bash
# Runs every test of vigil: formatting, unit and end-to-end tests (release profile,
# one build shared by all), and a short fuzzing smoke run of each parser.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

if [ "${VIGIL_CLIPPY:-0}" = "1" ]; then
  echo "== cargo clippy"
  cargo clippy --release --workspace --all-targets -- -D warnings
fi

echo "== cargo test (unit + end-to-end against the real binary)"
cargo test --release --workspace

echo "== fuzz smoke (${FUZZ_SECONDS:-30}s per target)"
bash scripts/fuzz-smoke.sh
