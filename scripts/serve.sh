#!/usr/bin/env bash
# Builds vigil (release) and starts it on its embedded default: data under
# ./vigil-data, HTTP on 127.0.0.1:8181. Extra arguments go to `vigil serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  . "$HOME/.cargo/env"
fi
bash scripts/build-deps.sh
cargo build --release -p vigil
exec ./target/release/vigil serve "$@"
