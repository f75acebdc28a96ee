#!/usr/bin/env bash
# Runs the whole pipeline locally: builds in release mode, installs and starts the broker,
# starts ingest and one aggregator, prints the URLs. Ctrl-C stops everything cleanly.
# State lives in $TALLY_DATA_DIR (default ./.tally): the broker's log and tally.db.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${TALLY_DATA_DIR:-$PWD/.tally}"
port="${TALLY_BROKER_PORT:-9092}"
export TALLY_BROKERS="127.0.0.1:$port"
export TALLY_INGEST_LISTEN="${TALLY_INGEST_LISTEN:-127.0.0.1:8080}"
export TALLY_AGGREGATOR_LISTEN="${TALLY_AGGREGATOR_LISTEN:-127.0.0.1:8081}"
export TALLY_DB="${TALLY_DB:-$data/tally.db}"

infra/install-broker.sh >/dev/null
cargo build --release --workspace --bins
mkdir -p "$data"

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  # Services first (they flush and commit), then the broker.
  for pid in "${pids[@]:1}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
  kill -TERM "${pids[0]}" 2>/dev/null || true
  wait "${pids[0]}" 2>/dev/null || true
  echo "stopped"
}
trap stop INT TERM EXIT

TALLY_DATA_DIR="$data" TALLY_BROKER_PORT="$port" infra/local-broker.sh >"$data/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
target/release/ingest &
pids+=($!)
target/release/aggregator &
pids+=($!)

cat <<TXT

Tally is running (broker 127.0.0.1:$port, data in $data):
  ingest      http://$TALLY_INGEST_LISTEN
  aggregator  http://$TALLY_AGGREGATOR_LISTEN

  curl -s -X POST -d 'key=page:home&value=1' http://$TALLY_INGEST_LISTEN/increment
  curl -s http://$TALLY_AGGREGATOR_LISTEN/sums/page:home

Press Ctrl-C to stop.
TXT
wait -n "${pids[@]}" || true
