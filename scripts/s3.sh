#!/usr/bin/env bash
# A real S3-compatible server for the cold-tier tests: moto's S3 server (PyPI
# `moto[server]`, installed by scripts/install-clients.sh), in memory, on loopback.
#
#   scripts/s3.sh serve PORT     # runs in the foreground until killed
#
# Any access key and secret are accepted; buckets are created with a plain
# `PUT http://127.0.0.1:PORT/BUCKET`.
set -euo pipefail
case "${1:-}" in
  serve)
    port="${2:?usage: scripts/s3.sh serve PORT}"
    exec python3 -m moto.server -H 127.0.0.1 -p "$port"
    ;;
  *)
    echo "usage: scripts/s3.sh serve PORT" >&2
    exit 2
    ;;
esac
