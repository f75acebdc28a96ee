#!/usr/bin/env bash
# Runs the whole pipeline locally on Apache Kafka: installs Kafka's jars once (Java and Maven
# needed), builds ingest, aggregator and replayer in release mode, starts a single-node Kafka,
# ingest and one aggregator, and prints the URLs. Ctrl-C stops everything cleanly.
# State lives in $TALLY_DATA_DIR (default ./.tally): Kafka's log, tally.db, the process logs.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${TALLY_DATA_DIR:-$PWD/.tally}"
port="${TALLY_BROKER_PORT:-9092}"
export TALLY_BROKERS="127.0.0.1:$port"
export TALLY_INGEST_LISTEN="${TALLY_INGEST_LISTEN:-127.0.0.1:8080}"
export TALLY_AGGREGATOR_LISTEN="${TALLY_AGGREGATOR_LISTEN:-127.0.0.1:8081}"
export TALLY_DB="${TALLY_DB:-$data/tally.db}"
mkdir -p "$data"

say() { echo "run.sh: $*" >&2; }
# librdkafka's TLS links the system's OpenSSL: its headers and pkg-config, once.
if ! command -v pkg-config >/dev/null || ! pkg-config --exists openssl 2>/dev/null; then
  say "installing libssl-dev and pkg-config (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null
fi
say "installing Apache Kafka if missing (first run: Maven Central, about a minute)"
infra/install-kafka.sh >/dev/null
say "building ingest, aggregator and replayer (release; the first build takes several minutes)"
cargo build --release -p ingest -p aggregator -p replayer --bins

pids=()
stop() {
  trap - INT TERM EXIT
  echo; say "stopping..."
  # Services first (they flush and commit), then the broker.
  for pid in "${pids[@]:1}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
  kill -TERM "${pids[0]}" 2>/dev/null || true
  wait "${pids[0]}" 2>/dev/null || true
  say "stopped"
}
trap stop INT TERM EXIT

say "starting Kafka on 127.0.0.1:$port (log: $data/broker.log)"
TALLY_BROKER_PORT="$port" infra/local-kafka.sh "$data" >"$data/broker.log" 2>&1 &
pids+=($!)
for i in $(seq 1 600); do
  grep -q "Kafka Server started" "$data/broker.log" 2>/dev/null && break
  kill -0 "${pids[0]}" 2>/dev/null || { say "Kafka exited; see $data/broker.log"; tail -20 "$data/broker.log" >&2; exit 1; }
  [ "$i" = 600 ] && { say "Kafka did not start within 60 s; see $data/broker.log"; exit 1; }
  sleep 0.1
done
target/release/ingest &
pids+=($!)
target/release/aggregator &
pids+=($!)

cat <<TXT

Tally is running (Kafka 127.0.0.1:$port, data in $data):
  ingest      http://$TALLY_INGEST_LISTEN
  aggregator  http://$TALLY_AGGREGATOR_LISTEN

  curl -s -X POST -d 'key=page:home&value=1' http://$TALLY_INGEST_LISTEN/increment
  curl -s http://$TALLY_AGGREGATOR_LISTEN/sums/page:home

Press Ctrl-C to stop.
TXT
wait -n "${pids[@]}" || true
