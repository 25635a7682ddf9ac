#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs the system packages
# it needs when they are missing, then builds everything and runs every test. Tests that need
# root, DPDK or network namespaces skip with a message where they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

echo "== build"
cargo build --workspace --all-targets "${FEATURES[@]}"
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace "${FEATURES[@]}" --no-fail-fast
else
  cargo test --workspace "${FEATURES[@]}" --no-fail-fast
fi
