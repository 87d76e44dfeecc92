#!/usr/bin/env bash
# Runs every test of vigil: formatting, unit and end-to-end tests (release profile,
# one build shared by all), and a short fuzzing smoke run of each parser.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need beyond a Rust toolchain: rustfmt and cargo-fuzz (and the
# clients below).
if ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add rustfmt
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

# The real clients the front-end tests drive: psql, psycopg, pgx, ADBC, JDBC.
bash scripts/install-clients.sh

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
