#!/usr/bin/env bash
# Sourced by run-example.sh and test.sh: installs what a fresh Debian 12 machine lacks (system
# packages as root, the Rust toolchain through rustup) and sets FEATURES for cargo.
# golang-go, golang-github-appc-cni-dev (libcni's source) and containernetworking-plugins (the
# IPAM plugins): the CNI plugin's tests drive it through libcni (cni/tests).
# protobuf-compiler: protoc for kubevirt/build.rs (the device plugin and hook gRPC APIs);
# libvirt-clients + libxml2-utils: virt-xml-validate, which the binding sidecar's tests run;
# iputils-ping: the KubeVirt end-to-end test, the overlay tests and the policy truth table
# (tests/policy_truth.rs) ping between namespaces; python3-scapy: the tunnel tests check VXLAN
# and Geneve against scapy's layers; prometheus: its promtool checks the scrape of
# `run --metrics` (tests/metrics_run.rs); wget: the vhost-user offload test fetches a file from a
# QEMU guest through the switch (tests/qemu_guest.rs); openvswitch-switch: the replay cases are
# checked against Open vSwitch's NORMAL action (tests/ovs_reference.rs).
pkgs=(build-essential pkg-config git curl ca-certificates iproute2 libdpdk-dev dpdk-dev
  golang-go golang-github-appc-cni-dev containernetworking-plugins
  protobuf-compiler libvirt-clients libxml2-utils iputils-ping python3-scapy prometheus wget openvswitch-switch ${EXTRA_PKGS:-})
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
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "== installing the Rust toolchain (rustup)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  . "$HOME/.cargo/env"
fi
FEATURES=()
if pkg-config --exists libdpdk 2>/dev/null; then
  FEATURES=(--features dpdk)
  echo "== DPDK $(pkg-config --modversion libdpdk) found: building with --features dpdk"
else
  echo "== DPDK not found: building without the dpdk feature (DPDK ports and tests skipped)"
fi
