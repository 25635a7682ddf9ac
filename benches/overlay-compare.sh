#!/usr/bin/env bash
# The kernel-UDP VXLAN transport of switchyard against the Linux kernel's own VXLAN device and
# bridge, side by side on the same veth underlay. Two "nodes" (namespaces u1, u2, joined by
# one veth pair, 10.99.0.1 and .2), each with one "VM" namespace on a veth (10.50.0.1 and .2,
# MTU 1450: the overlay MTU over a 1500-byte underlay). Per round, in turn (MODES):
#  - switchyard: `switchyard run --switch` on each node, the VM's veth an AF_PACKET port
#    (`rx_mode: recvmmsg`, as the CNI plugin opens a pod's veth: no ring, whose 1 ms
#    block-retire timer would hold a lone frame) and a `type: vxlan` port (VNI 5001) on one
#    bridge, run with RUN_ARGS (default none: `run`'s defaults, under which a worker whose
#    ports are all kernel sockets does not spin when idle);
#  - switchyard-spin: the same with a 2 ms idle spin (`--idle-spin-us 2000`, `run`'s default
#    before it was decided per worker: the cores are shared with both VMs' TCP stacks, which a
#    worker spinning between frames starves);
#  - kernel: on each node a `vxlan` device (id 5001, dstport 4789) and the VM's veth in a
#    kernel bridge;
#  - switchyard-l2: the switchyard processes with the underlay veth an AF_PACKET port instead
#    of the tunnel (no encapsulation): what the two-process path costs without the tunnel;
#  - switchyard-fast: the fast path, the `type: vxlan` port on the underlay veth as its AF_PACKET
#    uplink (`underlay: eth0`: switchyard writes the outer headers and answers ARP for the
#    tunnel address, which is taken off the node's kernel for the round);
#  - switchyard-alt (not in the default MODES): the switchyard setup with ALT_BIN and ALT_ARGS,
#    for an A/B of two builds or two option sets in the same rounds.
# It prints, for each: TCP throughput of one FWD_MB MiB transfer VM to VM (nc); the CPU time
# of the transfer per MiB (both nc processes, whose system time holds the kernel's forwarding
# run in their context, the head feeding the sender, ksoftirqd, and every switchyard thread;
# and switchyard's share); the
# round-trip time of PINGS pings (ping -i 0.01, average); then the medians over ROUNDS rounds
# and the ratios to the kernel. PROFILE=1 also prints each switchyard thread's CPU time. It
# asserts nothing. Needs root, iproute2, nc, ping; builds nothing: run
# `cargo build --release --features dpdk` first.
#
# usage: benches/overlay-compare.sh
#   env: ROUNDS=3 FWD_MB=256 PINGS=200 MODES="switchyard switchyard-spin kernel switchyard-l2
#        switchyard-fast" RUN_ARGS="" VM_RX_MODE=recvmmsg BIN=target/release/switchyard
#        ALT_BIN=$BIN ALT_ARGS=$RUN_ARGS PROFILE=0
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard}
VM_RX_MODE=${VM_RX_MODE:-recvmmsg}
RUN_ARGS=${RUN_ARGS-}
ALT_BIN=${ALT_BIN:-$BIN}
ALT_ARGS=${ALT_ARGS-$RUN_ARGS}
ROUNDS=${ROUNDS:-3}
FWD_MB=${FWD_MB:-256}
PINGS=${PINGS:-200}
MODES=${MODES:-switchyard switchyard-spin kernel switchyard-l2 switchyard-fast}
case " $MODES " in *" kernel "*) ;; *) MODES="$MODES kernel" ;; esac
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
    local bin=${2:-$BIN} args=${3-$RUN_ARGS}
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
  - {name: vm, type: afpacket, rx_mode: $VM_RX_MODE}
  - $link
EOF
        ip netns exec "$P-u$i" "$bin" run --switch "$TMP/sw$i.yaml" --socket "$TMP/ctl$i.sock" \
            --cni-state "$TMP/cni$i" --vhost-dir "$TMP/vhost$i" $args 2>"$TMP/run$i.log" &
        PIDS+=($!)
    done
    for i in 1 2; do
        for _ in $(seq 100); do [ -S "$TMP/ctl$i.sock" ] && break; sleep 0.1; done
    done
}
up_switchyard() { start_switchyard vxlan; }
up_switchyard-alt() { start_switchyard vxlan "$ALT_BIN" "$ALT_ARGS"; }
up_switchyard-spin() { start_switchyard vxlan "$BIN" "--idle-spin-us 2000"; }
down_switchyard-spin() { down_switchyard; }
down_switchyard-alt() { down_switchyard; }
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

# CPU nanoseconds the tasks of the given processes (every thread) have run, summed.
task_ns() {
    local p t sum=0
    for p in "$@"; do
        for t in /proc/"$p"/task/*/schedstat; do
            [ -r "$t" ] && sum=$((sum + $(cut -d' ' -f1 "$t" 2>/dev/null || echo 0)))
        done
    done
    echo "$sum"
}
# Milliseconds of children's user+system time in a file `times` wrote (its second line). The
# builtin must run in the shell that waited for them, without a fork (a subshell's counters
# start at zero): `times >FILE`.
children_ms() {
    sed -n 2p "$1" | awk '{ s = 0
        for (i = 1; i <= NF; i++) { split($i, a, "m"); sub("s", "", a[2]); s += a[1] * 60000 + a[2] * 1000 }
        printf "%.0f\n", s }'
}
# With PROFILE=1: each switchyard thread's CPU time (ns) by process and name, for a difference.
thread_ns() {
    local p t
    for p in "${PIDS[@]}"; do
        for t in /proc/"$p"/task/*; do
            echo "$p/$(cat "$t/comm" 2>/dev/null)/${t##*/} $(cut -d' ' -f1 "$t/schedstat" 2>/dev/null)"
        done
    done
}
KSOFTIRQD=$(pgrep -x 'ksoftirqd/[0-9]+' | tr '\n' ' ')

# Prints "MiB/s rtt_ms cpu_ms_per_MiB switchyard_ms_per_MiB" for the path that is up: the CPU
# time of the transfer is that of both nc processes and the head feeding one (nc's system time
# holds the kernel's forwarding done in its context: softirq on the way out of a send),
# ksoftirqd and every thread of the switchyard processes; the last column is switchyard's share.
measure() {
    for _ in $(seq 50); do ip netns exec "$P-a1" ping -q -c1 -W1 10.50.0.2 >/dev/null 2>&1 && break; done
    local c0 k0 s0 c1 k1 s1
    [ "${PROFILE:-0}" = 1 ] && thread_ns | sort >"$TMP/threads0"
    times >"$TMP/times0"
    k0=$(task_ns $KSOFTIRQD)
    s0=$(task_ns "${PIDS[@]}")
    ip netns exec "$P-a2" nc -l -N 10.50.0.2 5001 >/dev/null &
    local srv=$!
    sleep 0.3
    local t0 t1 rtt
    t0=$(date +%s.%N)
    head -c $((FWD_MB << 20)) /dev/zero | ip netns exec "$P-a1" nc -N 10.50.0.2 5001
    wait "$srv"
    t1=$(date +%s.%N)
    times >"$TMP/times1"
    c0=$(children_ms "$TMP/times0")
    c1=$(children_ms "$TMP/times1")
    k1=$(task_ns $KSOFTIRQD)
    s1=$(task_ns "${PIDS[@]}")
    if [ "${PROFILE:-0}" = 1 ]; then
        thread_ns | sort | join "$TMP/threads0" - | awk -v mb="$FWD_MB" '$3 - $2 > 1e6 {
            printf "  thread %s: %.3f ms a MiB\n", $1, ($3 - $2) / 1e6 / mb }' >&2
        echo "  nc processes $((c1 - c0)) ms, ksoftirqd $(((k1 - k0) / 1000000)) ms" >&2
    fi
    rtt=$(ip netns exec "$P-a1" ping -q -n -c "$PINGS" -i 0.01 10.50.0.2 | sed -n 's|.* = [0-9.]*/\([0-9.]*\)/.*|\1|p')
    awk -v mb="$FWD_MB" -v t="$(echo "$t1 - $t0" | bc)" -v r="$rtt" -v c=$((c1 - c0)) -v k=$(((k1 - k0) / 1000000)) \
        -v s=$(((s1 - s0) / 1000000)) 'BEGIN { printf "%.0f %s %.2f %.2f\n", mb / t, r, (c + k + s) / mb, s / mb }'
}

: >"$TMP/kernel.txt"
for mode in $MODES; do : >"$TMP/$mode.txt"; done
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in $MODES; do
        "up_$mode"
        m=$(measure)
        "down_$mode"
        echo "$m" >>"$TMP/$mode.txt"
        read -r mbs rtt cpu sy <<<"$m"
        printf "round %d %-15s: TCP %d MiB VM to VM: %s MiB/s, CPU %s ms a MiB (switchyard %s); ping rtt avg %s ms (%d pings); load %s\n" \
            "$r" "$mode" "$FWD_MB" "$mbs" "$cpu" "$sy" "$rtt" "$PINGS" "$(cut -d' ' -f1 /proc/loadavg)"
    done
done
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
col() { awk -v c="$2" '{ print $c }' "$TMP/$1.txt" | median; }
k_t=$(col kernel 1)
k_r=$(col kernel 2)
k_c=$(col kernel 3)
for mode in $MODES; do
    awk -v m="$mode" -v n="$ROUNDS" -v t="$(col "$mode" 1)" -v r="$(col "$mode" 2)" -v c="$(col "$mode" 3)" \
        -v s="$(col "$mode" 4)" -v kt="$k_t" -v kr="$k_r" -v kc="$k_c" 'BEGIN {
        printf "median of %d: %-15s %s MiB/s (%.2f of the kernel), rtt %s ms (%.1fx), CPU %s ms a MiB (%.2fx; switchyard %s)\n",
            n, m, t, t / kt, r, r / kr, c, c / kc, s }'
done
