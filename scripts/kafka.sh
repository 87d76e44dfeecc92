#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, broker and controller in one JVM) on a
# free loopback port, for tests and benchmarks. The Kafka jars come from Maven Central
# (mvn dependency:copy-dependencies) and are cached in target/kafka/<version>/.
#
#   scripts/kafka.sh start DIR    # prints BROKER=127.0.0.1:PORT once the broker is ready
#                                 # (a DIR started before: the same broker again)
#   scripts/kafka.sh stop DIR
#
# DIR holds the broker's config, logs, data and pid file.
set -euo pipefail
cd "$(dirname "$0")/.."
version="${KAFKA_VERSION:-4.1.1}"
jars="$PWD/target/kafka/$version"
java_opts=(-Xmx512m -cp "$jars/*")

provision() {
  [ -f "$jars/kafka_2.13-$version.jar" ] && return
  mkdir -p "$jars"
  local pom
  pom="$(mktemp -d)/pom.xml"
  cat > "$pom" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>vigil</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  echo "== fetching Kafka $version jars (Maven Central)" >&2
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$jars" >&2
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start() {
  local dir="$1"
  provision
  mkdir -p "$dir/data"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/server.properties" ]; then
    # Started before: the same broker (port, cluster, data) comes back.
    launch "$dir" "$(cat "$dir/broker")"
    return
  fi
  local port controller
  port="$(free_port)"
  controller="$(free_port)"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  cat > "$dir/log4j2.properties" <<LOG
status = error
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d %p %c: %m%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
LOG
  # A cluster id starting with '-' would be read as an option (Kafka's own
  # Uuid.randomUuid() skips those too): 1 start in 64 failed that way.
  local cluster_id
  cluster_id="$(python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break')"
  if ! java "${java_opts[@]}" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    kafka.tools.StorageTool format -t "$cluster_id" \
    -c "$dir/server.properties" --standalone >"$dir/format.log" 2>&1; then
    echo "formatting the Kafka log directory failed:" >&2
    cat "$dir/format.log" >&2
    return 1
  fi
  launch "$dir" "127.0.0.1:$port"
}

# Runs the broker of DIR and waits until it reports "Kafka Server started" (once
# more than the log already says, for a restart).
launch() {
  local dir="$1" addr="$2" before
  before="$(grep -c "Kafka Server started" "$dir/broker.log" 2>/dev/null || true)"
  nohup java "${java_opts[@]}" -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    kafka.Kafka "$dir/server.properties" >>"$dir/stdout.log" 2>&1 &
  echo $! > "$dir/pid"
  for _ in $(seq 1 600); do
    if [ "$(grep -c "Kafka Server started" "$dir/broker.log" 2>/dev/null || true)" -gt "${before:-0}" ]; then
      echo "$addr" > "$dir/broker"
      echo "BROKER=$addr"
      return 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "Kafka exited during startup; see $dir/broker.log and $dir/stdout.log" >&2
      tail -20 "$dir/stdout.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  echo "Kafka did not start within 60 s; see $dir/broker.log" >&2
  return 1
}

stop() {
  local dir="$1"
  [ -f "$dir/pid" ] || return 0
  local pid
  pid="$(cat "$dir/pid")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/pid"; return 0; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/pid"
}

case "${1:-}" in
  start) start "${2:?usage: kafka.sh start DIR}" ;;
  stop) stop "${2:?usage: kafka.sh stop DIR}" ;;
  provision) provision ;;
  *) echo "usage: kafka.sh start|stop DIR | provision" >&2; exit 2 ;;
esac
