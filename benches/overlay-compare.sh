#!/usr/bin/env bash
# The kernel-UDP VXLAN transport of switchyard against the Linux kernel's own VXLAN device and
# bridge, side by side on the same veth underlay. Two "nodes" (namespaces u1, u2, joined by
# one veth pair, 10.99.0.1 and .2), each with one "VM" namespace on a veth (10.50.0.1 and .2,
# MTU 1450: the overlay MTU over a 1500-byte underlay). Per round, in turn:
#  - switchyard: `switchyard run --switch` on each node, the VM's veth an AF_PACKET port and a
#    `type: vxlan` port (VNI 5001) on one bridge;
#  - kernel: on each node a `vxlan` device (id 5001, dstport 4789) and the VM's veth in a
#    kernel bridge.
#  - switchyard-l2: the same two processes with the underlay veth an AF_PACKET port instead of
#    the tunnel (no encapsulation): what the two-process path costs without the tunnel.
#  - switchyard-fast: the fast path, the `type: vxlan` port on the underlay veth as its AF_PACKET
#    uplink (`underlay: eth0`: switchyard writes the outer headers and answers ARP for the
#    tunnel address, which is taken off the node's kernel for the round).
# It prints, for each: TCP throughput of one FWD_MB MiB transfer VM to VM (nc), and the
# round-trip time of PINGS pings (ping -i 0.01, average), then the median over ROUNDS rounds
# and the ratios switchyard/kernel. It asserts nothing. Needs root, iproute2, nc, ping; builds
# nothing: run `cargo build --release --features dpdk` first.
#
# usage: benches/overlay-compare.sh        env: ROUNDS=3 FWD_MB=256 PINGS=200
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard
ROUNDS=${ROUNDS:-3}
FWD_MB=${FWD_MB:-256}
PINGS=${PINGS:-200}
TMP=$(mktemp -d)
P=syov$$
PIDS=()
stop_all() {
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() {
    stop_all
    for n in u1 u2 a1 a2; do ip netns del "$P-$n" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

for n in u1 u2 a1 a2; do
    ip netns add "$P-$n"
    ip netns exec "$P-$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip -n "$P-$n" link set lo up
done
ip link add eth0 netns "$P-u1" type veth peer name eth0 netns "$P-u2"
for i in 1 2; do
    ip -n "$P-u$i" addr add "10.99.0.$i/24" dev eth0
    ip -n "$P-u$i" link set eth0 up
    ip link add eth0 netns "$P-a$i" mtu 1450 type veth peer name vm netns "$P-u$i" mtu 1450
    ip -n "$P-a$i" addr add "10.50.0.$i/24" dev eth0
    ip -n "$P-a$i" link set eth0 up
    ip -n "$P-u$i" link set vm up
done

# $1: the port that joins the nodes: a vxlan port, or (mode switchyard-l2, the same two
# processes without a tunnel) the underlay veth itself as an AF_PACKET port.
start_switchyard() {
    for i in 1 2; do
        local other=$((3 - i)) link
        if [ "$1" = vxlan ]; then
            link="{name: tun0, type: vxlan, vni: 5001, local: 10.99.0.$i, flood: [10.99.0.$other]}"
        elif [ "$1" = fast ]; then
            link="{name: tun0, type: vxlan, vni: 5001, local: 10.99.0.$i, underlay: eth0, flood: [10.99.0.$other]}"
        else
            link="{name: eth0, type: afpacket}"
        fi
        cat >"$TMP/sw$i.yaml" <<EOF
bridges:
- name: br
  ports:
  - {name: vm, type: afpacket}
  - $link
EOF
        ip netns exec "$P-u$i" "$BIN" run --switch "$TMP/sw$i.yaml" --socket "$TMP/ctl$i.sock" \
            --cni-state "$TMP/cni$i" --vhost-dir "$TMP/vhost$i" 2>"$TMP/run$i.log" &
        PIDS+=($!)
    done
    for i in 1 2; do
        for _ in $(seq 100); do [ -S "$TMP/ctl$i.sock" ] && break; sleep 0.1; done
    done
}
up_switchyard() { start_switchyard vxlan; }
up_switchyard-l2() { start_switchyard l2; }
down_switchyard() { stop_all; rm -f "$TMP"/ctl*.sock; }
down_switchyard-l2() { down_switchyard; }
up_switchyard-fast() {
    for i in 1 2; do ip -n "$P-u$i" addr flush dev eth0; done
    start_switchyard fast
}
down_switchyard-fast() {
    down_switchyard
    for i in 1 2; do ip -n "$P-u$i" addr add "10.99.0.$i/24" dev eth0; done
}

up_kernel() {
    for i in 1 2; do
        local other=$((3 - i)) n="$P-u$i"
        ip -n "$n" link add kbr type bridge
        ip -n "$n" link add vx0 type vxlan id 5001 dstport 4789 local "10.99.0.$i" remote "10.99.0.$other"
        ip -n "$n" link set vx0 master kbr
        ip -n "$n" link set vm master kbr
        ip -n "$n" link set vx0 up
        ip -n "$n" link set kbr up
    done
}
down_kernel() {
    for i in 1 2; do
        ip -n "$P-u$i" link del vx0
        ip -n "$P-u$i" link del kbr
    done
}

# Prints "MiB/s rtt_ms" for the path that is up.
measure() {
    for _ in $(seq 50); do ip netns exec "$P-a1" ping -q -c1 -W1 10.50.0.2 >/dev/null 2>&1 && break; done
    ip netns exec "$P-a2" nc -l -N 10.50.0.2 5001 >/dev/null &
    local srv=$!
    sleep 0.3
    local t0 t1 rtt
    t0=$(date +%s.%N)
    head -c $((FWD_MB << 20)) /dev/zero | ip netns exec "$P-a1" nc -N 10.50.0.2 5001
    wait "$srv"
    t1=$(date +%s.%N)
    rtt=$(ip netns exec "$P-a1" ping -q -n -c "$PINGS" -i 0.01 10.50.0.2 | sed -n 's|.* = [0-9.]*/\([0-9.]*\)/.*|\1|p')
    awk -v mb="$FWD_MB" -v t="$(echo "$t1 - $t0" | bc)" -v r="$rtt" 'BEGIN { printf "%.0f %s\n", mb / t, r }'
}

: >"$TMP/switchyard.txt"
: >"$TMP/kernel.txt"
: >"$TMP/switchyard-l2.txt"
: >"$TMP/switchyard-fast.txt"
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in switchyard kernel switchyard-l2 switchyard-fast; do
        "up_$mode"
        m=$(measure)
        "down_$mode"
        echo "$m" >>"$TMP/$mode.txt"
        read -r mbs rtt <<<"$m"
        printf "round %d %-10s: TCP %d MiB VM to VM: %s MiB/s; ping rtt avg %s ms (%d pings)\n" \
            "$r" "$mode" "$FWD_MB" "$mbs" "$rtt" "$PINGS"
    done
done
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
sy_t=$(awk '{ print $1 }' "$TMP/switchyard.txt" | median)
k_t=$(awk '{ print $1 }' "$TMP/kernel.txt" | median)
sy_r=$(awk '{ print $2 }' "$TMP/switchyard.txt" | median)
k_r=$(awk '{ print $2 }' "$TMP/kernel.txt" | median)
l2_t=$(awk '{ print $1 }' "$TMP/switchyard-l2.txt" | median)
l2_r=$(awk '{ print $2 }' "$TMP/switchyard-l2.txt" | median)
f_t=$(awk '{ print $1 }' "$TMP/switchyard-fast.txt" | median)
f_r=$(awk '{ print $2 }' "$TMP/switchyard-fast.txt" | median)
awk -v st="$sy_t" -v kt="$k_t" -v sr="$sy_r" -v kr="$k_r" -v lt="$l2_t" -v lr="$l2_r" -v ft="$f_t" -v fr="$f_r" \
    -v n="$ROUNDS" 'BEGIN {
    printf "median of %d: switchyard %s MiB/s, kernel vxlan+bridge %s MiB/s: ratio %.2f\n", n, st, kt, st / kt
    printf "median of %d: switchyard rtt %s ms, kernel vxlan+bridge rtt %s ms: ratio %.2f\n", n, sr, kr, sr / kr
    printf "median of %d: switchyard-l2 (no tunnel) %s MiB/s, rtt %s ms: vxlan/l2 throughput ratio %.2f\n", n, lt, lr, st / lt
    printf "median of %d: switchyard-fast (AF_PACKET uplink) %s MiB/s, rtt %s ms: fast/kernel throughput ratio %.2f\n", n, ft, fr, ft / kt
}'
