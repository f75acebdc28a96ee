#!/usr/bin/env bash
# Runs a local single-node Apache Kafka (KRaft) in the foreground; installs it first if needed.
#   infra/local-kafka.sh [DATA_DIR]      (default: $TALLY_DATA_DIR or ./.tally)
# Listens and advertises on 127.0.0.1:${TALLY_BROKER_PORT:-9092} (controller on the port after
# it, or TALLY_CONTROLLER_PORT). Formats the data directory once; later runs reuse it.
# TALLY_KAFKA_FLUSH_EVERY_MESSAGE=1 makes the broker fsync each record before it acknowledges.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
data="${1:-${TALLY_DATA_DIR:-$PWD/.tally}}"
data="$(mkdir -p "$data" && cd "$data" && pwd)"
port="${TALLY_BROKER_PORT:-9092}"
cport="${TALLY_CONTROLLER_PORT:-$((port + 1))}"
home="$("$here/install-kafka.sh")"
conf="$data/kafka-server.properties"
sed -e "s|@NODE_ID@|1|g" -e "s|@VOTERS@|1@127.0.0.1:$cport|g" -e "s|@INTERNAL_RF@|1|g" \
  -e "s|@INTERNAL_MIN_ISR@|1|g" -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$cport|g" -e "s|@HOST@|127.0.0.1|g" \
  -e "s|@DATA@|$data/kafka|g" "$here/kafka/server.properties.in" >"$conf"
if [ "${TALLY_KAFKA_FLUSH_EVERY_MESSAGE:-0}" = 1 ]; then echo "log.flush.interval.messages=1" >>"$conf"; fi
java_opts=(-Xms256m -Xmx1g -XX:+UseG1GC -Dlog4j2.configurationFile="$home/log4j2.properties")
if [ ! -f "$data/kafka/log/meta.properties" ]; then
  id_file="$data/kafka-cluster-id"
  [ -f "$id_file" ] || java -cp "$home/lib/*" kafka.tools.StorageTool random-uuid >"$id_file"
  echo "formatting $data/kafka/log (cluster $(cat "$id_file"))" >&2
  java "${java_opts[@]}" -cp "$home/lib/*" kafka.tools.StorageTool format \
    --cluster-id "$(cat "$id_file")" --config "$conf" --ignore-formatted >&2
fi
exec java "${java_opts[@]}" -cp "$home/lib/*" kafka.Kafka "$conf"
