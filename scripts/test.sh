#!/usr/bin/env bash
# Runs Tally's whole test suite on a fresh machine: installs the broker if missing (built once
# into ~/.cache/tally, outside the clone), builds the binaries the end-to-end tests start,
# checks formatting and lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
TALLY_TANSU_BIN="$(infra/install-broker.sh)"
export TALLY_TANSU_BIN
echo "broker: $TALLY_TANSU_BIN"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace "$@"
