#!/usr/bin/env bash
# A guard on speed: the L2 pipeline's instructions per frame, counted by callgrind (repeatable
# for the same binary and input, whatever else the machine does) on
# dataplane/examples/pipeline_instructions.rs, must stay at or under the stated limit. The
# figure that docs/benchmarks.md describes is about 103 instructions a frame; the limit (13%
# above it) leaves room for compiler drift, not for a new stage on the hot path. The same for
# a VM's port with a MAC spoof filter (one source MAC, `allowed_macs` of it: `macspoofchk`,
# OVN's port security), about 119 instructions a frame, and for tagged frames from a trunk
# (an uplink) to an access port, their tags popped, about 159; and for tagged frames from a
# trunk with a MAC spoof filter (a router VM on a `vlanTrunk` network with `macspoofchk`: one
# source MAC, allowed) to an access port, about 171.
#   PIPELINE_MAX_INSNS            the limit (default 117)
#   PIPELINE_MAC_MAX_INSNS        the limit with the MAC spoof filter (default 133)
#   PIPELINE_TRUNK_MAX_INSNS      the limit from the trunk (default 180)
#   PIPELINE_TRUNK_MAC_MAX_INSNS  the limit from the trunk with the MAC spoof filter (default 193)
set -euo pipefail
cd "$(dirname "$0")/.."
max=${PIPELINE_MAX_INSNS:-117}
mac_max=${PIPELINE_MAC_MAX_INSNS:-133}
trunk_max=${PIPELINE_TRUNK_MAX_INSNS:-180}
trunk_mac_max=${PIPELINE_TRUNK_MAC_MAX_INSNS:-193}
bursts=20000
if ! command -v valgrind >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
  else
    echo "== pipeline guard: valgrind is missing (apt install valgrind)" >&2
    exit 1
  fi
fi
cargo build -q --release --example pipeline_instructions -p switchyard-dataplane
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# guard LABEL LIMIT: one count of the example (its configuration in the environment).
guard() {
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" --toggle-collect='*process_burst*' \
    "${CARGO_TARGET_DIR:-target}/release/examples/pipeline_instructions" "$bursts" >"$out/stdout" 2>"$out/stderr"
  collected=$(sed -nE 's/^==[0-9]+== Collected : ([0-9]+).*/\1/p' "$out/stderr")
  if [ -z "$collected" ]; then
    cat "$out/stderr" >&2
    echo "== pipeline guard: no instruction count from callgrind ($1)" >&2
    exit 1
  fi
  per=$(awk -v c="$collected" -v n="$bursts" 'BEGIN { printf "%.1f", c / (n * 32) }')
  echo "== pipeline guard: $1: $per instructions a frame (limit $2; callgrind, $bursts bursts of 32)"
  awk -v p="$per" -v m="$2" 'BEGIN { exit !(p <= m) }' || {
    echo "== pipeline guard: over the limit: the forwarding path got slower ($1)" >&2
    exit 1
  }
}
guard "access ports" "$max"
CFG=$'bridges:\n- name: br0\n  ports:\n  - {name: p0, allowed_macs: [\'02:00:00:00:00:00\']}\n  - {name: p1}\n' \
  SOURCES=1 guard "a VM port's MAC spoof filter" "$mac_max"
CFG=$'bridges:\n- name: br0\n  ports:\n  - {name: p0, trunks: [10]}\n  - {name: p1, vlan_mode: access, tag: 10}\n' \
  TAG_IN=10 guard "a trunk's tagged frames to an access port" "$trunk_max"
CFG=$'bridges:\n- name: br0\n  ports:\n  - {name: p0, trunks: [10], allowed_macs: [\'02:00:00:00:00:00\']}\n  - {name: p1, vlan_mode: access, tag: 10}\n' \
  SOURCES=1 TAG_IN=10 guard "a MAC-filtered trunk's tagged frames to an access port" "$trunk_mac_max"
