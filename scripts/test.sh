#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs the system packages
# it needs when they are missing, then builds everything and runs every test. Tests that need
# root, DPDK or network namespaces skip with a message where they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

# tests/qemu_guest.rs boots a real QEMU guest on a vhost-user port: as root, install QEMU and
# build its guest (a Debian kernel downloaded, not installed, and a busybox initramfs; cached).
# Without them the test skips. SWITCHYARD_QEMU_TEST=0 leaves them out.
if [ "$(id -u)" = 0 ] && [ "${SWITCHYARD_QEMU_TEST:-1}" != 0 ]; then
  echo "== QEMU guest for tests/qemu_guest.rs"
  timeout 900 scripts/qemu-guest-assets.sh || echo "== no QEMU guest: tests/qemu_guest.rs will skip"
fi

echo "== build"
cargo build --workspace --all-targets "${FEATURES[@]}"
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace "${FEATURES[@]}" --no-fail-fast
else
  cargo test --workspace "${FEATURES[@]}" --no-fail-fast
fi
