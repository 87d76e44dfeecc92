#!/usr/bin/env bash
# Runs every test of vigil: formatting, unit and end-to-end tests (release profile,
# one build shared by all), and a short fuzzing smoke run of each parser.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the tests need beyond a Rust toolchain: rustfmt (and the clients below).
if ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add rustfmt
fi

bash scripts/build-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

# The real clients the front-end tests drive (psql, psycopg, pgx, ADBC, JDBC, the
# Kafka broker): mostly downloads, so they install while the build uses the CPU.
mkdir -p target
bash scripts/install-clients.sh >target/install-clients.log 2>&1 &
clients=$!

if [ "${VIGIL_CLIPPY:-0}" = "1" ]; then
  echo "== cargo clippy"
  cargo clippy --release --workspace --all-targets -- -D warnings
fi

echo "== cargo build (release, every test target)"
cargo test --release --workspace --no-run

echo "== installing the clients (log: target/install-clients.log)"
if ! wait "$clients"; then
  cat target/install-clients.log
  echo "installing the test clients failed" >&2
  exit 1
fi
tail -n 3 target/install-clients.log

echo "== cargo test (unit + end-to-end against the real binary)"
cargo test --release --workspace

echo "== fuzz smoke (${FUZZ_SECONDS:-10}s per target)"
bash scripts/fuzz-smoke.sh
