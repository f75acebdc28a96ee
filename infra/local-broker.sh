#!/usr/bin/env bash
# Runs the local Kafka-protocol broker (tansu) in the foreground with durable SQLite storage.
#   infra/local-broker.sh [DATA_DIR]      (default: $TALLY_DATA_DIR or ./.tally)
# Listens and advertises on 127.0.0.1:${TALLY_BROKER_PORT:-9092}. Installs tansu first if needed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${1:-${TALLY_DATA_DIR:-$PWD/.tally}}"
port="${TALLY_BROKER_PORT:-9092}"
bin="$("$here/install-broker.sh")"
mkdir -p "$data"
cd "$data"
url="tcp://127.0.0.1:$port"
# tansu resolves sqlite://FILE relative to its working directory (a leading / is stripped).
exec "$bin" broker --listener-url "$url" --advertised-listener-url "$url" \
  --storage-engine "sqlite://tansu.db"
