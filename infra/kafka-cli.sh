#!/usr/bin/env bash
# Runs Apache Kafka's own command-line tools (org.apache.kafka:kafka-tools, installed with the
# broker by infra/install-kafka.sh) against scripts/run.sh's broker:
#   infra/kafka-cli.sh consumer-groups --describe --group tally-aggregator   # offsets and lag
#   infra/kafka-cli.sh topics --describe --topic increments                  # partitions, ISR
#   infra/kafka-cli.sh configs --describe --entity-type topics --entity-name increments
#   infra/kafka-cli.sh get-offsets --topic increments                        # log end offsets
#   infra/kafka-cli.sh log-dirs --describe                                   # sizes on disk
#   infra/kafka-cli.sh TOOL --help                                           # a tool's options
# The broker is TALLY_BROKERS (default 127.0.0.1:9092, scripts/run.sh's); a --bootstrap-server
# on the command line wins. Exit codes are the tool's; 2 for an unknown tool.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="consumer-groups topics configs get-offsets log-dirs"
case "${1:-}" in
  consumer-groups) class=org.apache.kafka.tools.consumer.group.ConsumerGroupCommand ;;
  topics) class=org.apache.kafka.tools.TopicCommand ;;
  configs) class=org.apache.kafka.tools.ConfigCommand ;;
  get-offsets) class=org.apache.kafka.tools.GetOffsetShell ;;
  log-dirs) class=org.apache.kafka.tools.LogDirsCommand ;;
  -h | --help)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "error: unknown Kafka tool '${1:-}'; use one of: $tools (infra/kafka-cli.sh --help)" >&2
    exit 2
    ;;
esac
shift
args=("$@")
if [[ " $* " != *" --bootstrap-server "* && " $* " != *" --bootstrap-server="* && " $* " != *" --help "* ]]; then
  args=(--bootstrap-server "${TALLY_BROKERS:-127.0.0.1:9092}" "${args[@]}")
fi
home="$("$here/install-kafka.sh")"
exec java -Xms64m -Xmx256m -XX:TieredStopAtLevel=1 \
  -Dlog4j2.configurationFile="$here/kafka/tools-log4j2.properties" \
  -cp "$home/lib/*" "$class" "${args[@]}"
