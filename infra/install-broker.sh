#!/usr/bin/env bash
# Installs the local Kafka-protocol broker (tansu 0.6.0) once, outside the clone.
# Prints the path of the tansu binary on stdout. Override the cache with TALLY_TANSU_ROOT,
# or point TALLY_TANSU_BIN at an existing binary.
set -euo pipefail
VERSION=0.6.0
ROOT="${TALLY_TANSU_ROOT:-$HOME/.cache/tally/tansu-$VERSION}"
BIN="${TALLY_TANSU_BIN:-$ROOT/bin/tansu}"

has_libsql() { [ -x "$1" ] && "$1" --help 2>/dev/null | grep -q 'libsql'; }

if has_libsql "$BIN"; then
  echo "$BIN"
  exit 0
fi
if [ -n "${TALLY_TANSU_BIN:-}" ]; then
  echo "error: TALLY_TANSU_BIN=$TALLY_TANSU_BIN is not a tansu binary with the libsql engine; unset it to build one" >&2
  exit 1
fi
echo "installing tansu $VERSION into $ROOT (takes about 12 minutes on 2 cores, done once)" >&2
mkdir -p "$ROOT"
cargo install tansu --version "$VERSION" --locked --features libsql,dynostore --root "$ROOT" >&2
if ! has_libsql "$BIN"; then
  echo "error: tansu was built but $BIN does not list the libsql storage engine" >&2
  exit 1
fi
echo "$BIN"
