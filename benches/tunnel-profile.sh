#!/usr/bin/env bash
# Where the instructions of the DPDK tunnel fast path go: `switchyard run --switch` on the
# ports and captures of benches/tunnel-compare.sh (net_pcap vdevs read forever, a local port
# p0 and a VXLAN port tun0 on uplink p1, learning on), one worker (`--lcores 1 --busy-poll`),
# under `valgrind --tool=callgrind --separate-threads=yes`, EAL without hugepages (a mount
# namespace without the hugetlbfs). After WARM seconds the counts are zeroed, after SECS more
# dumped; the frames are counted from the profile (the RX bursts, below). Prints
# the worker thread's instructions per frame pair (one encapsulated, one decapsulated) and
# leaves the worker's profile for callgrind_annotate in OUT (default /tmp/tunnel-profile).
# The plain L2 switch on two such ports is `L2=1` (p1 a dpdk port reading a.pcap's peer
# b.pcap). It asserts nothing; instruction counts do not depend on the machine's load.
#
# `LEARN=false` profiles the port as a plan from cluster state writes it (learning off: every
# source checked against the configured endpoints).
#
# usage: benches/tunnel-profile.sh [SECS]       (default 30; env WARM=15 MACS=256 OUT=DIR L2=0 LEARN=true)
#        BIN=target/release/switchyard (build it first: cargo build --release --features dpdk)
set -euo pipefail

SECS=${1:-30}
WARM=${WARM:-15}
MACS=${MACS:-256}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard}
OUT=${OUT:-/tmp/tunnel-profile}
CORE=${CORE:-1}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/tunnel-profile.XXXXXX)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$WORK" "/var/run/dpdk/tnlprof$$"
}
trap cleanup EXIT

python3 "$ROOT/benches/gen_pcaps.py" --macs "$MACS" "$WORK/a.pcap" "$WORK/b.pcap"
/usr/bin/python3 "$ROOT/benches/gen_tunnel_pcap.py" --vni 5001 --src-mac 02:00:00:00:99:02 \
    --dst-mac 02:00:00:00:99:01 --src 10.99.0.2 --dst 10.99.0.1 "$WORK/b.pcap" "$WORK/benc.pcap"
if [ "${L2:-0}" = 1 ]; then
    second="- {name: tun0, type: dpdk, devargs: \"net_pcap1,rx_pcap=$WORK/b.pcap,infinite_rx=1\"}"
else
    second="- {name: tun0, type: vxlan, vni: 5001, local: 10.99.0.1, underlay: \"dpdk:net_pcap1,rx_pcap=$WORK/benc.pcap,infinite_rx=1\", flood: [10.99.0.2], learn: ${LEARN:-true}}"
fi
cat >"$WORK/sy.yaml" <<EOF
bridges:
- name: br
  ports:
  - {name: p0, type: dpdk, devargs: "net_pcap0,rx_pcap=$WORK/a.pcap,infinite_rx=1"}
  $second
EOF
rm -f "$OUT"/callgrind.out*
# No hugetlbfs in the profiled process's mount namespace: EAL runs with --no-huge.
unshare -m sh -c 'umount -a -t hugetlbfs 2>/dev/null; exec "$@"' sh \
    valgrind --tool=callgrind --separate-threads=yes --compress-strings=no --compress-pos=no --callgrind-out-file="$OUT/callgrind.out" \
    "$BIN" run --switch "$WORK/sy.yaml" --socket "$WORK/sy.sock" --lcores "$CORE" --busy-poll \
    --cni-state "$WORK/cni" --vhost-dir "$WORK/vhost" >"$WORK/sy.log" 2>&1 &
PID=$!
tx() {
    "$BIN" ctl --socket "$WORK/sy.sock" show stats |
        awk '/^port (p0|tun0) / {for (i = 1; i < NF; i++) if ($i == "tx") {gsub(/[^0-9]/, "", $(i + 1)); s += $(i + 1)}} END {print s + 0}'
}
for ((i = 0; i < 600; i++)); do
    [ -S "$WORK/sy.sock" ] && tx >/dev/null 2>&1 && break
    kill -0 "$PID" 2>/dev/null || { tail "$WORK/sy.log"; exit 1; }
    sleep 0.5
done
sleep "$WARM"
callgrind_control -z "$PID" >/dev/null
sleep "$SECS"
callgrind_control -d "$PID" >/dev/null
kill "$PID"
wait "$PID" 2>/dev/null || true
PID=
# The worker: the thread file of the dump (part 1) with the most instructions.
best= most=0
for f in "$OUT"/callgrind.out.1-[0-9]*; do
    [ -f "$f" ] || continue
    ir=$(awk '/^summary:/ {print $2}' "$f")
    [ "${ir:-0}" -gt "$most" ] && most=$ir best=$f
done
# The frames: counted in the profile itself, as the calls of sy_rte_eth_rx_burst (the shim's
# one RX call, both ports) times 32. net_pcap's infinite_rx answers every call with as many
# frames as asked (none when its mempool is empty: a call that got nothing counts 32 all the
# same), and the ports ask for a full burst of 32 (the default burst) while the worker keeps
# up. On 1fd0113 the count agreed with net_pcap's per-frame free on transmit to 20 frames in
# 8.4 million. The TX counters read with `ctl` around the asynchronous zero and dump missed
# seconds of the window (2,027.8 instructions a pair on the build that gives 1,111.5 this way).
calls=$(awk '/^cfn=/ {rx = ($0 ~ /^cfn=sy_rte_eth_rx_burst$/)} /^calls=/ && rx {split($0, a, /[= ]/); n += a[2]; rx = 0} END {print n + 0}' "$best")
frames=$((calls * 32))
pairs=$((frames / 2))
[ "$pairs" -gt 0 ] || { echo "no sy_rte_eth_rx_burst calls in $best" >&2; exit 1; }
echo "frames in: $frames ($pairs pairs; $calls RX bursts of 32) in $SECS s under callgrind; worker $best"
awk -v i="$most" -v p="$pairs" 'BEGIN {printf "worker instructions per frame pair: %.1f\n", i / p}'
echo "per function: callgrind_annotate $best | head -40"
