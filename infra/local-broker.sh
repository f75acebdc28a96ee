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
"$bin" broker --listener-url "$url" --advertised-listener-url "$url" \
  --storage-engine "sqlite://tansu.db" &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null || true' INT TERM
# Once tansu has created its schema, add the index it lacks (see tansu-indexes.sql).
python3 - "$here/tansu-indexes.sql" <<'PY'
import sqlite3, sys, time
for _ in range(300):
    try:
        db = sqlite3.connect("tansu.db", timeout=10)
        if db.execute("select 1 from sqlite_master where type='table' and name='header'").fetchone():
            db.executescript(open(sys.argv[1]).read())
            break
    except sqlite3.Error:
        pass
    time.sleep(0.1)
else:
    sys.exit("tansu did not create its schema in 30 s; is it running? see the log above")
PY
wait "$pid"
