#!/usr/bin/env bash
# What building vigil needs beyond a Rust toolchain: protoc (Debian
# protobuf-compiler), which the etcd client crate compiles etcd's gRPC
# definitions with. Installed with apt when missing.
set -euo pipefail
if command -v protoc >/dev/null 2>&1 || [ -n "${PROTOC:-}" ]; then
  exit 0
fi
echo "== installing protoc (protobuf-compiler)"
if [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null
else
  sudo apt-get update -qq && sudo apt-get install -y -qq protobuf-compiler >/dev/null
fi
