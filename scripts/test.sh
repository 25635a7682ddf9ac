#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs the system packages
# it needs when they are missing, then builds everything and runs every test. Tests that need
# root, DPDK or network namespaces skip with a message where they cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential pkg-config git curl ca-certificates iproute2 libdpdk-dev dpdk-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "== missing packages (run as root to install them): ${missing[*]}"
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "== installing the Rust toolchain (rustup)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  . "$HOME/.cargo/env"
fi

features=()
if pkg-config --exists libdpdk 2>/dev/null; then
  features=(--features dpdk)
  echo "== DPDK $(pkg-config --modversion libdpdk) found: building with --features dpdk"
else
  echo "== DPDK not found: building without the dpdk feature (DPDK tests skipped)"
fi

echo "== build"
cargo build --workspace --all-targets "${features[@]}"
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace "${features[@]}" --no-fail-fast
  cargo test --workspace --doc "${features[@]}"
else
  cargo test --workspace "${features[@]}" --no-fail-fast
fi
