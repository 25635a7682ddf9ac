#!/usr/bin/env bash
# Runs switchyard doing its main job: `switchyard run` on the example cluster state
# (examples/state, node worker-1). It programs its ports from the manifests, then forwards
# real traffic between two "VMs" and an external host (network namespaces on veth pairs that
# this script creates and removes), and reprograms itself when a manifest changes.
# Needs root (namespaces, AF_PACKET); without it, falls back to the pcap replay of the example.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_PKGS="iputils-ping tcpdump netcat-openbsd"
. scripts/setup.sh
cargo build --release "${FEATURES[@]}"
# The binary just built, wherever CARGO_TARGET_DIR puts it.
sy=${CARGO_TARGET_DIR:-$PWD/target}/release/switchyard

if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! ip netns add sy-probe-$$ 2>/dev/null; then
  echo "== not root or no network namespaces here: replaying the example instead"
  out=$(mktemp -d /tmp/switchyard-example.XXXXXX)
  "$sy" replay examples/replay/scenario.yaml --out "$out" --expect examples/replay/expected --trace
  exit 0
fi
ip netns del sy-probe-$$

tmp=$(mktemp -d /tmp/switchyard-run.XXXXXX)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  for ns in sy-vm-a sy-vm-b sy-ext; do ip netns del "$ns" 2>/dev/null || true; done
  for l in sy-vma sy-vmb sy-eth1; do ip link del "$l" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# The "VMs" and the external host: documentation addresses (198.51.100.0/24) inside namespaces.
host() { # host NS IF PEER MAC [ADDR]
  ip netns add "$1"
  ip link add "$3" type veth peer name "$2" netns "$1"
  sysctl -qw "net.ipv6.conf.$3.disable_ipv6=1"
  # The host's own stack must stay out of the switch's traffic on these ends.
  sysctl -qw "net.ipv4.conf.$3.arp_ignore=8"
  ip netns exec "$1" sysctl -qw "net.ipv6.conf.all.disable_ipv6=1"
  ip link set "$3" up
  ip -n "$1" link set "$2" address "$4" up
  ip -n "$1" link set lo up
  if [ -n "${5:-}" ]; then ip -n "$1" addr add "$5/24" dev "$2"; fi
}
host sy-vm-a vma0 sy-vma 02:00:00:00:0a:01 198.51.100.1
host sy-vm-b vmb0 sy-vmb 02:00:00:00:0b:01 198.51.100.2
# The uplink's far end only listens (this kernel may lack VLAN devices): it shows the tags.
host sy-ext ext0 sy-eth1 02:00:00:00:ee:01

cp -r examples/state "$tmp/state"
echo "== switchyard run --state <copy of examples/state> --node worker-1 --config examples/run/config.yaml"
SWITCHYARD_LOG=info "$sy" run --state "$tmp/state" --node worker-1 --config examples/run/config.yaml \
  --socket "$tmp/ctl.sock" --vhost-dir "$tmp/vhost" --cni-state "$tmp/cni" >"$tmp/run.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$tmp/ctl.sock" ] && break; sleep 0.1; done
ctl() { echo "\$ switchyard ctl $*"; "$sy" ctl --socket "$tmp/ctl.sock" "$@"; }
sed 's/^/  | /' "$tmp/run.log"
ctl show ports

echo "== vm-a -> vm-b: both in VLAN 100 on the switch"
ip netns exec sy-vm-a ping -c 3 -i 0.2 -W 1 198.51.100.2
echo "== vm-a -> vm-b: a 20 MB TCP transfer (the veths keep their default checksum offload and TSO)"
head -c 20000000 /dev/urandom >"$tmp/blob"
ip netns exec sy-vm-b timeout 30 nc -l 198.51.100.2 5201 >"$tmp/got" &
srv=$!
sleep 0.3
ip netns exec sy-vm-a timeout 30 nc -N 198.51.100.2 5201 <"$tmp/blob"
wait "$srv"
if cmp -s "$tmp/blob" "$tmp/got"; then
  echo "   20000000 bytes arrived intact: $(sha256sum <"$tmp/got" | cut -c1-16)..."
else
  echo "TCP transfer through the switch failed ($(stat -c %s "$tmp/got") bytes arrived)"; exit 1
fi
echo "== vm-a asks for 198.51.100.9, an address behind the uplink: the broadcast leaves eth1 tagged 100"
if command -v tcpdump >/dev/null; then
  ip netns exec sy-ext timeout 4 tcpdump -l -c 2 -eni ext0 arp 2>/dev/null &
  dump=$!
  sleep 0.5
fi
ip netns exec sy-vm-a ping -c 2 -i 0.3 -W 1 198.51.100.9 >/dev/null || true
[ -n "${dump:-}" ] && wait "$dump" || true
ctl show fdb br1

echo "== vm-b moves to a new network (NAD vlan101): the manifest changes, switchyard reprograms"
cat >>"$tmp/state/network/nads.yaml" <<'NAD'
---
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: vlan101, namespace: tenant-a}
spec:
  config: '{"cniVersion":"0.3.1","name":"vlan101","type":"cnv-bridge","bridge":"br1","vlan":101,"macspoofchk":true}'
NAD
sed -i 's/networkName: vlan100/networkName: vlan101/' "$tmp/state/vms/vm-b.yaml"
sleep 1
ctl show ports
echo "== vm-a -> vm-b now crosses VLANs: no reply expected"
if ip netns exec sy-vm-a ping -c 2 -i 0.2 -W 1 198.51.100.2; then echo "unexpected: reply across VLANs"; exit 1; fi
ctl show stats

echo "== switchyard's log"
sed 's/^/  | /' "$tmp/run.log"
kill -TERM "$pid"; wait "$pid"; pid=""
echo "== switchyard stopped cleanly"
