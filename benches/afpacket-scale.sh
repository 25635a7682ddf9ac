#!/usr/bin/env bash
# AF_PACKET ports at scale, RX mode `ring` (TPACKET_V3) against `recvmmsg`, one mode after the
# other on the same veths. For each mode it prints:
#  - idle: CPU of `switchyard run --switch FILE` with N idle AF_PACKET ports over SECS seconds
#    (utime+stime from /proc/PID/stat), the machine's softirq CPU time (/proc/stat) and TIMER
#    and HRTIMER softirqs per second (/proc/softirqs) over the same window (all CPUs: other load
#    on the machine counts too);
#  - add: `cni_add` of ADD more ports with N present, over the control socket
#    (benches/cni_add_latency.py), median and p99;
#  - fwd: TCP throughput between two veth pods through `switchyard pmd --fwd switch`, ROUNDS
#    rounds interleaved ring/recvmmsg (FWD_MB MiB each).
# It asserts nothing. Needs root and iproute2; builds nothing: run `cargo build --release
# --features dpdk` first.
#
# usage: benches/afpacket-scale.sh        env: N=500 ADD=100 SECS=10 ROUNDS=3 FWD_MB=512
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard
N=${N:-500}
ADD=${ADD:-100}
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
TMP=$(mktemp -d)
NS=sy-scale-$$
H=ys$$h # host ends: $H0 .. ; peers ys$$p0 .. in $NS
PID=
cleanup() {
    [ -n "$PID" ] && stop "$PID"
    ip netns del "$NS" 2>/dev/null || true
    ip netns del "$NS-a" 2>/dev/null || true
    ip link del "${H}fa" 2>/dev/null || true
    ip link del "${H}fb" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add "$NS"
{
    for ((i = 0; i < N + ADD; i++)); do
        echo "link add $H$i type veth peer name ys$$p$i netns $NS"
        echo "link set $H$i up"
    done
} | ip -batch -
for ((i = 0; i < N + ADD; i++)); do echo "link set ys$$p$i up"; done | ip -n "$NS" -batch -

# TIMER and HRTIMER softirqs (the ring's retire timer is an hrtimer on newer kernels).
timer_softirqs() { awk '$1 == "'"$1"':" { s = 0; for (i = 2; i <= NF; i++) s += $i; print s }' /proc/softirqs; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# The machine's softirq time (/proc/stat, all CPUs): softirqs are charged to no process.
softirq_ticks() { awk '$1 == "cpu" { print $8 }' /proc/stat; }
stop() {
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

for mode in ring recvmmsg; do
    cfg=$TMP/$mode.yaml
    {
        echo "bridges:"
        echo "  - name: br1"
        echo "    ports:"
        for ((i = 0; i < N; i++)); do
            echo "      - {name: p$i, type: afpacket, iface: $H$i, tag: 10, rx_mode: $mode}"
        done
    } >"$cfg"
    sock=$TMP/$mode.sock
    t0=$(date +%s.%N)
    "$BIN" run --switch "$cfg" --socket "$sock" --cni-state "$TMP/cni-$mode" --vhost-dir "$TMP" \
        >"$TMP/$mode.log" 2>&1 &
    PID=$!
    while [ ! -S "$sock" ]; do
        kill -0 "$PID" || { cat "$TMP/$mode.log"; exit 1; }
        sleep 0.1
    done
    t1=$(date +%s.%N)
    sleep 2
    c0=$(cpu_ticks "$PID")
    q0=$(softirq_ticks)
    s0=$(timer_softirqs TIMER)
    h0=$(timer_softirqs HRTIMER)
    sleep "$SECS"
    c1=$(cpu_ticks "$PID")
    q1=$(softirq_ticks)
    s1=$(timer_softirqs TIMER)
    h1=$(timer_softirqs HRTIMER)
    hz=$(getconf CLK_TCK)
    awk -v m="$mode" -v n="$N" -v c=$((c1 - c0)) -v q=$((q1 - q0)) -v s=$((s1 - s0)) -v h=$((h1 - h0)) -v hz="$hz" -v secs="$SECS" \
        -v up="$(echo "$t1 - $t0" | bc)" 'BEGIN {
        printf "%-8s idle: %d ports up in %.2f s; switchyard CPU %.1f%% of one core; softirq CPU (all) %.1f%% of one core; softirqs TIMER %.0f/s HRTIMER %.0f/s\n",
            m, n, up, 100 * c / hz / secs, 100 * q / hz / secs, s / secs, h / secs }'
    python3 "$ROOT/benches/cni_add_latency.py" "$sock" "$mode" "$H" "$N" "$ADD" | sed "s/^/$mode add ($N present): /"
    stop "$PID"
    PID=
done

# Forwarding: TCP (nc) from pod a to pod b, each a namespace on a veth with its default
# offloads (TSO super-frames, partial checksums), through `switchyard pmd --fwd switch` on the
# host ends: what a pod's port carries. Prints MB/s of one transfer of FWD_MB MiB.
FWD_MB=${FWD_MB:-512}
ip netns add "$NS-a"
ip link add "${H}fa" type veth peer name ys$$fa netns "$NS-a"
ip link add "${H}fb" type veth peer name ys$$fb netns "$NS"
ip link set "${H}fa" up
ip link set "${H}fb" up
ip -n "$NS-a" addr add 10.203.0.1/24 dev ys$$fa
ip -n "$NS" addr add 10.203.0.2/24 dev ys$$fb
ip -n "$NS-a" link set ys$$fa up
ip -n "$NS" link set ys$$fb up
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in ring recvmmsg; do
        "$BIN" pmd --port "afpacket:${H}fa,$mode" --port "afpacket:${H}fb,$mode" --fwd switch --json \
            >"$TMP/fwd.json" 2>/dev/null </dev/zero &
        PID=$!
        sleep 1
        ip netns exec "$NS" nc -l -N 10.203.0.2 5001 >/dev/null &
        srv=$!
        sleep 0.3
        t0=$(date +%s.%N)
        head -c $((FWD_MB << 20)) /dev/zero | ip netns exec "$NS-a" nc -N 10.203.0.2 5001
        wait "$srv"
        t1=$(date +%s.%N)
        stop "$PID"
        PID=
        drops=$(tail -1 "$TMP/fwd.json" | python3 -c "import json,sys; d=json.load(sys.stdin); print(sum(p['drops'] for p in d['ports']))")
        awk -v m="$mode" -v r="$r" -v mb="$FWD_MB" -v t="$(echo "$t1 - $t0" | bc)" -v d="$drops" \
            'BEGIN { printf "fwd round %d %-8s: TCP %d MiB through pmd --fwd switch in %.2f s: %.0f MiB/s (drops %d)\n", r, m, mb, t, mb / t, d }'
    done
done
