#!/usr/bin/env bash
# Installs Apache Kafka's broker jars once, outside the clone, from infra/kafka/pom.xml (version
# pinned there). Prints the install directory on stdout: it holds lib/*.jar and log4j2.properties.
# Override the directory with TALLY_KAFKA_HOME; a second run finds the jars and does nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")"
home="${TALLY_KAFKA_HOME:-$HOME/.cache/tally/kafka-$version}"
stamp="$home/installed-from"
want="$(sha256sum "$here/kafka/pom.xml" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$home/lib/kafka_2.13-$version.jar" ]; then
  cp "$here/kafka/log4j2.properties" "$home/log4j2.properties"
  echo "$home"
  exit 0
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed; install OpenJDK 17 and Maven (apt-get install openjdk-17-jdk-headless maven)" >&2; exit 1; }
done
echo "installing Apache Kafka $version into $home (Maven Central, done once)" >&2
rm -rf "$home.tmp"
mkdir -p "$home.tmp"
mvn -q -B -f "$here/kafka/pom.xml" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$home.tmp/lib" >&2
[ -f "$home.tmp/lib/kafka_2.13-$version.jar" ] || { echo "error: Maven finished but kafka_2.13-$version.jar is not in $home.tmp/lib" >&2; exit 1; }
rm -rf "$home"
mv "$home.tmp" "$home"
cp "$here/kafka/log4j2.properties" "$home/log4j2.properties"
echo "$want" >"$stamp"
echo "$home"
