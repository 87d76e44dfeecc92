#!/usr/bin/env bash
# Installs the real clients the end-to-end tests drive against a running vigil:
# psql (Debian), psycopg and the ADBC Flight SQL driver (PyPI), pgx v5 and a
# Prometheus remote-write sender built on Prometheus's own prompb (Go modules),
# Prometheus Alertmanager (Debian) and aiosmtpd (PyPI, a real SMTP server) for
# the alerting tests,
# DuckDB (PyPI, the reference the time-series function checks compare against),
# moto's S3-compatible server (PyPI, the cold tier's tests; see scripts/s3.sh),
# and the Arrow Flight SQL JDBC driver (Maven Central). Everything lands in
# target/clients/ (or the usual package locations) and is reused on the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$PWD/target/clients"
mkdir -p "$out"

if ! command -v psql >/dev/null 2>&1; then
  echo "== installing psql (postgresql-client)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq postgresql-client >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq postgresql-client >/dev/null
  fi
fi

# A real PostgreSQL server: the reference for the catalog answers Grafana, psql,
# DBeaver and psycopg read (scripts/postgres.sh starts it).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "== installing PostgreSQL (postgresql)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq postgresql >/dev/null
  fi
fi

if ! command -v prometheus-alertmanager >/dev/null 2>&1; then
  echo "== installing Prometheus Alertmanager (prometheus-alertmanager)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq prometheus-alertmanager >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq prometheus-alertmanager >/dev/null
  fi
fi

# The scrape tests' real components: etcd (discovery and the collector ring),
# node_exporter (a target) and Prometheus (the reference scraper).
if ! command -v etcd >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1 \
  || ! command -v prometheus-node-exporter >/dev/null 2>&1; then
  echo "== installing etcd, Prometheus and node_exporter (etcd-server, prometheus, prometheus-node-exporter)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq etcd-server prometheus prometheus-node-exporter >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq etcd-server prometheus prometheus-node-exporter >/dev/null
  fi
fi

if ! python3 -c 'import psycopg, adbc_driver_flightsql, pyarrow, duckdb, moto.server, flask_cors, aiosmtpd, cryptography' >/dev/null 2>&1; then
  echo "== installing psycopg, adbc-driver-flightsql, pyarrow, duckdb, moto's S3 server, aiosmtpd (PyPI)"
  python3 -m pip install -q --disable-pip-version-check \
    'psycopg[binary]==3.3.9' 'adbc-driver-flightsql==1.13.0' 'adbc-driver-manager==1.13.0' 'pyarrow>=18' \
    'duckdb==2.0.1' 'moto[server]==5.2.1' 'aiosmtpd==1.4.6' 'cryptography'
fi

if [ ! -x "$out/pgx-client" ] || [ tests/clients/pgx/main.go -nt "$out/pgx-client" ]; then
  echo "== building the pgx v5 client (Go)"
  (cd tests/clients/pgx && go build -o "$out/pgx-client" .)
fi

if [ ! -x "$out/remotewrite-client" ] || [ tests/clients/remotewrite/main.go -nt "$out/remotewrite-client" ]; then
  echo "== building the Prometheus remote-write sender (Go, prometheus/prompb)"
  (cd tests/clients/remotewrite && go build -o "$out/remotewrite-client" .)
fi

jdbc_version=18.3.0
jar="$out/flight-sql-jdbc-driver-$jdbc_version.jar"
if [ ! -f "$jar" ]; then
  echo "== fetching the Arrow Flight SQL JDBC driver $jdbc_version (Maven Central)"
  mvn -q -B dependency:copy -Dartifact="org.apache.arrow:flight-sql-jdbc-driver:$jdbc_version" \
    -DoutputDirectory="$out"
fi
if [ ! -f "$out/java/JdbcClient.class" ] || [ tests/clients/java/JdbcClient.java -nt "$out/java/JdbcClient.class" ]; then
  mkdir -p "$out/java"
  javac -d "$out/java" tests/clients/java/JdbcClient.java
fi


# The Kafka broker jars (Maven Central) for the Kafka ingest tests.
bash scripts/kafka.sh provision
echo "clients ready in $out"
