#!/usr/bin/env bash
# The incumbent side by side: the same veth "pods" and the same traffic through (a) the Linux
# kernel bridge, (b) switchyard on AF_PACKET ports, TPACKET_V3 ring RX, (c) switchyard on
# AF_PACKET ports, recvmmsg RX (the CNI veth mode's), (d) switchyard on AF_XDP ports (its own
# XDP program redirects each veth's frames into an AF_XDP socket; veth has native XDP; TX in
# copy mode, which is what veth offers). It asserts nothing; it prints AF_XDP's frames per
# second per core spent and its ping latency as ratios to the kernel bridge's.
#
# Topology (one per contender, made afresh): the generator's veth gen0 <-> sy$$g (a switch
# port), the sink's veth, in netns S, sink0 <-> sy$$s (a switch port), and two ping "pods",
# netns A and B, whose veths' host ends sy$$a and sy$$b are switch ports too. The bridge is a
# plain `ip link add type bridge` (the bridge CNI sets vlan_filtering=1; this machine's kernel
# lacks CONFIG_BRIDGE_VLAN_FILTERING, so it is the plain bridge, without VLANs, that is
# measured; switchyard's ports are access ports of VLAN 1 in its `pmd --fwd switch` trunk).
# switchyard: `switchyard pmd --fwd switch --stage-cycles` on one core (SW_CORE), without
# --busy-poll (as `switchyard run` runs by default), or with it when BUSY=1; its own summary
# (busy cycles a frame by stage: what a frame costs it when it never idles) is printed too.
#
# Load: benches/pktsend.c (this kernel has no pktgen) sends 64-byte frames (UDP/IPv4) to the
# sink's MAC out of gen0 at RATE frames/s (0 = as fast as it goes), pinned to GEN_CORE, for SECS
# seconds; the sink's MAC is learned first (the sink pings A once). Frames delivered = the sink
# veth's rx_packets. CPU over the same window: the generator's and switchyard's processes
# (utime+stime, /proc/PID/stat) and the machine's softirq time (/proc/stat, every CPU: the
# kernel bridge forwards in the sender's softirq and has no thread of its own; other load on
# the machine counts too, hence the "none" row: the same generator into a port that goes
# nowhere, the cost of generating and receiving alone). The forwarder's CPU per frame is the
# total (generator + softirq + switchyard) less the "none" row's at the same rate, per frame
# delivered.
# Latency: `ping -c PINGS -i 0.01` from A to B (light load: nothing else is sent meanwhile),
# median and p99 of the round trips in microseconds.
#
# usage: benches/bridge-compare.sh          env: SECS=5 RATE=200000 ROUNDS=3 PINGS=200
#        MODES="none bridge ring recvmmsg afxdp" (none is the baseline: keep it; ring-base,
#        recvmmsg-base and afxdp-base run the binary SY_BASE names instead, in the same rounds,
#        so that two builds are compared side by side)
#        GEN_CORE=0 SW_CORE=1 BUSY=0 SW_ARGS= (more pmd options, e.g. --idle-spin-us 50)
#        PRIO=0 (1: see below). Needs root, iproute2, util-linux (setsid), cc, and
#        target/release/switchyard.
set -euo pipefail
# PRIO=1: the whole benchmark (generator, switch, pings) in a session of its own whose
# autogroup has nice -20. With kernel.sched_autogroup_enabled=1 every session is one
# scheduling group, so other sessions' builds, however niced, take an equal share of each core
# from a benchmark run at nice 0 (a switch preempted for milliseconds drops frames at its
# fill ring); this gives the benchmark the cores the way a node's exclusive CPUs would.
if [ "${PRIO:-0}" = 1 ] && [ -z "${SY_BENCH_SESSION:-}" ]; then
    SY_BENCH_SESSION=1 exec setsid --wait "$0" "$@"
fi
[ "${PRIO:-0}" = 1 ] && [ -w /proc/self/autogroup ] && echo -20 >/proc/self/autogroup
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SWITCHYARD:-${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard}
SECS=${SECS:-5}
RATE=${RATE:-200000}
ROUNDS=${ROUNDS:-3}
PINGS=${PINGS:-200}
GEN_CORE=${GEN_CORE:-0}
SW_CORE=${SW_CORE:-1}
BUSY=${BUSY:-0}
[ "$(id -u)" = 0 ] || { echo "needs root (netns, veth, bridges)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "$BIN not found: cargo build --release first" >&2; exit 1; }
TMP=$(mktemp -d)
P=sy$$
NS_S=$P-s NS_A=$P-a NS_B=$P-b
SW_PID=
HZ_TICKS=$(getconf CLK_TCK)

stop() {
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
teardown() {
    [ -n "$SW_PID" ] && stop "$SW_PID"
    SW_PID=
    ip link del "${P}br" 2>/dev/null || true
    # The host ends first: a veth pair dies with either end at once, while one left inside a
    # deleted netns lingers until the netns is cleaned up (asynchronously), and the next
    # topology's `ip link add` of the same name would fail with "File exists".
    for l in gen0$$ "${P}s" "${P}a" "${P}b"; do ip link del "$l" 2>/dev/null || true; done
    for ns in "$NS_S" "$NS_A" "$NS_B"; do ip netns del "$ns" 2>/dev/null || true; done
}
cleanup() {
    teardown
    rm -rf "$TMP"
}
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM

cc -O2 -o "$TMP/pktsend" "$ROOT/benches/pktsend.c"

# The veths and pods; the four switch ports are ${P}g ${P}s ${P}a ${P}b.
topology() {
    teardown
    ip link add gen0$$ type veth peer name "${P}g"
    ip netns add "$NS_S"
    ip netns add "$NS_A"
    ip netns add "$NS_B"
    ip link add "${P}s" type veth peer name sink0 netns "$NS_S"
    ip link add "${P}a" type veth peer name eth0 netns "$NS_A"
    ip link add "${P}b" type veth peer name eth0 netns "$NS_B"
    for l in gen0$$ "${P}g" "${P}s" "${P}a" "${P}b"; do ip link set "$l" up; done
    ip -n "$NS_S" addr add 10.77.0.3/24 dev sink0
    ip -n "$NS_A" addr add 10.77.0.1/24 dev eth0
    ip -n "$NS_B" addr add 10.77.0.2/24 dev eth0
    for ns in "$NS_S" "$NS_A" "$NS_B"; do
        ip -n "$ns" link set lo up
        ip -n "$ns" link set "$( [ "$ns" = "$NS_S" ] && echo sink0 || echo eth0)" up
    done
}

# Connects the four ports: none | bridge | ring | recvmmsg.
attach() {
    case $1 in
    none) ;;
    bridge)
        ip link add "${P}br" type bridge
        for l in g s a b; do ip link set "$P$l" master "${P}br"; done
        ip link set "${P}br" up
        ;;
    ring | recvmmsg | afxdp | ring-base | recvmmsg-base | afxdp-base)
        local kind=afpacket suffix= busy=() bin=$BIN mode=${1%-base}
        [ "$mode" != "$1" ] && bin=${SY_BASE:?"SY_BASE=<another switchyard binary> for the -base modes"}
        [ "$mode" = recvmmsg ] && suffix=,recvmmsg
        [ "$mode" = afxdp ] && kind=afxdp
        [ "$BUSY" = 1 ] && busy=(--busy-poll)
        local cmd=(taskset -c "$SW_CORE" "$bin" pmd --fwd switch --lcores "$SW_CORE" "${busy[@]}" --stage-cycles ${SW_ARGS:-}
            --port "$kind:${P}g$suffix" --port "$kind:${P}s$suffix"
            --port "$kind:${P}a$suffix" --port "$kind:${P}b$suffix")
        echo "   switch: ${cmd[*]}" >&2
        "${cmd[@]}" >"$TMP/sw.out" 2>&1 &
        SW_PID=$!
        sleep 1.5
        kill -0 "$SW_PID" 2>/dev/null || { echo "switchyard exited: $(tail -3 "$TMP/sw.out")" >&2; return 1; }
        # "xdp" = native (in the veth driver), "xdpgeneric" = the skb path.
        [ "$mode" = afxdp ] && echo "   XDP on the switch ports: $(ip -d link show "${P}g" | grep -o 'xdp[a-z]*' | head -1)" >&2
        ;;
    esac
    # Let every port learn its MACs (pings fail on `none`; that is fine).
    ip netns exec "$NS_S" ping -c 1 -W 1 10.77.0.1 >/dev/null 2>&1 || true
    ip netns exec "$NS_A" ping -c 1 -W 1 10.77.0.2 >/dev/null 2>&1 || true
}

proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
softirq_ticks() { awk '$1 == "cpu" { print $8 }' /proc/stat; }
# The breakdown: "gen_core_softirq sw_core_softirq sw_user sw_sys" in ticks, and the switch's
# context switches (voluntary = it slept and was woken; involuntary = preempted), all threads.
detail() {
    local pid=${1:-0}
    awk -v a="cpu$GEN_CORE" -v b="cpu$SW_CORE" '$1 == a { ga = $8 } $1 == b { gb = $8 } END { printf "%d %d ", ga, gb }' /proc/stat
    if [ "$pid" != 0 ] && [ -r "/proc/$pid/stat" ]; then
        awk '{ printf "%d %d ", $14, $15 }' "/proc/$pid/stat"
        cat /proc/"$pid"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/ { v += $2 } /^nonvoluntary_ctxt/ { n += $2 } END { printf "%d %d\n", v, n }'
    else
        echo "0 0 0 0"
    fi
}
rx_sink() { ip netns exec "$NS_S" cat /sys/class/net/sink0/statistics/rx_packets; }

# One load run: prints "delivered_pps offered_pps gen_ns softirq_ns sw_ns frames": CPU ns per
# frame delivered (per frame sent for `none`, where nothing is delivered).
load() {
    local mac r0 s0 w0 s1 w1 r1
    mac=$(ip netns exec "$NS_S" cat /sys/class/net/sink0/address)
    r0=$(rx_sink)
    s0=$(softirq_ticks)
    w0=0
    [ -n "$SW_PID" ] && w0=$(proc_ticks "$SW_PID")
    local d0 d1
    d0=$(detail "${SW_PID:-0}")
    taskset -c "$GEN_CORE" "$TMP/pktsend" gen0$$ "$mac" "$RATE" "$SECS" >"$TMP/gen.out"
    sleep 0.2
    s1=$(softirq_ticks)
    d1=$(detail "${SW_PID:-0}")
    w1=0
    [ -n "$SW_PID" ] && w1=$(proc_ticks "$SW_PID")
    r1=$(rx_sink)
    read -r sent gen_ns <"$TMP/gen.out"
    # Where the CPU went, per frame delivered (sent, for none): ns; the switch's sleeps
    # (voluntary context switches) and preemptions per 1,000 frames.
    awk -v mode="$1" -v d=$((r1 - r0)) -v sent="$sent" -v hz="$HZ_TICKS" -v a="$d0" -v b="$d1" 'BEGIN {
        split(a, x, " "); split(b, y, " "); n = mode == "none" ? sent : (d > 0 ? d : 1); t = 1e9 / hz / n
        printf "      breakdown: softirq on gen core %.0f, on switch core %.0f; switchyard user %.0f sys %.0f ns/frame; switchyard sleeps %.1f, preemptions %.1f per 1000 frames\n",
            (y[1] - x[1]) * t, (y[2] - x[2]) * t, (y[3] - x[3]) * t, (y[4] - x[4]) * t, (y[5] - x[5]) * 1000 / n, (y[6] - x[6]) * 1000 / n }' >&2
    awk -v mode="$1" -v d=$((r1 - r0)) -v sent="$sent" -v secs="$SECS" -v hz="$HZ_TICKS" -v g="$gen_ns" -v s=$((s1 - s0)) -v w=$((w1 - w0)) 'BEGIN {
        n = mode == "none" ? sent : (d > 0 ? d : 1)
        printf "%.0f %.0f %.0f %.0f %.0f %d\n", d / secs, sent / secs, g / n, s * 1e9 / hz / n, w * 1e9 / hz / n, d }'
}

lat() { # median and p99 round trip (us) of PINGS pings A -> B
    ip netns exec "$NS_A" ping -c "$PINGS" -i 0.01 -W 1 10.77.0.2 2>/dev/null |
        awk -F'time=' '/time=/ { split($2, a, " "); printf "%.0f\n", a[1] * 1000 }' | sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a n/a"; exit }
                                  p = int(NR * 0.99); if (p < 1) p = 1
                                  print v[int((NR + 1) / 2)], v[p] }'
}

declare -A ROWS
read -ra MODES <<<"${MODES:-none bridge ring recvmmsg afxdp}"
echo "== bridge netfilter hooks (net.bridge.bridge-nf-call-iptables): $(sysctl -n net.bridge.bridge-nf-call-iptables 2>/dev/null || echo 'no br_netfilter')"
echo "== kernel bridge vs switchyard AF_PACKET and AF_XDP: $RATE frames/s offered (0 = flat out), $SECS s, generator on core $GEN_CORE, switchyard on core $SW_CORE$([ "$BUSY" = 1 ] && echo ', busy polling'), $(cat /proc/self/autogroup 2>/dev/null || echo 'no autogroup'), load $(cut -d' ' -f1-3 /proc/loadavg)"
for ((round = 1; round <= ROUNDS; round++)); do
    for m in "${MODES[@]}"; do
        topology
        attach "$m" || { ROWS[$m]+="n/a;"; continue; }
        read -r pps offered gen soft sw frames < <(load "$m")
        read -r med p99 < <(if [ "$m" = none ]; then echo "n/a n/a"; else lat; fi)
        printf '  round %d %-9s delivered %8s/s of %8s/s offered (%s frames); ns/frame: generator %5s softirq %5s switchyard %5s; ping median %s us p99 %s us\n' \
            "$round" "$m" "$pps" "$offered" "$frames" "$gen" "$soft" "$sw" "$med" "$p99"
        ROWS[$m]+="$pps $gen $soft $sw $med $p99 $((gen + soft + sw));"
        if [ -n "$SW_PID" ]; then
            # The switch's own account (its summary on SIGTERM): busy cycles a frame, by stage.
            stop "$SW_PID"
            SW_PID=
            grep -E 'processing cycles per packet|CPU time|TSC at|drops:' "$TMP/sw.out" | sed 's/^ */      switchyard: /' >&2 || true
        fi
        teardown
    done
done

# Medians over the rounds of each column, then the forwarder's cost: the median of the rounds'
# totals less the none row's (the machine's softirq time, which other work on the machine adds
# to now and then, makes single columns jump between rounds).
median_col() { # mode column(1-based)
    tr ";" "\n" <<<"${ROWS[$1]:-}" | awk -v c="$2" 'NF { if ($c ~ /^[0-9.]+$/) print $c }' | sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}
echo
echo "== medians of $ROUNDS rounds (ns of CPU per delivered frame; 'forwarder' = total - none's total)"
base_total=$(median_col none 7)
for m in "${MODES[@]}"; do
    [ "$m" = none ] && continue
    pps=$(median_col "$m" 1) gen=$(median_col "$m" 2) soft=$(median_col "$m" 3) sw=$(median_col "$m" 4)
    awk -v m="$m" -v pps="$pps" -v g="$gen" -v s="$soft" -v w="$sw" -v b="$base_total" -v t="$(median_col "$m" 7)" \
        -v med="$(median_col "$m" 5)" -v p99="$(median_col "$m" 6)" 'BEGIN {
        f = t - b
        printf "  %-9s %9.0f frames/s  total %6.0f ns/frame (gen %4.0f softirq %4.0f switchyard %4.0f)  forwarder %6.0f ns/frame = %6.3f Mframes/s per core  ping median %s us p99 %s us\n",
            m, pps, t, g, s, w, f, (f > 0 ? 1e3 / f : 0), med, p99 }'
done
echo "  none      generator + receive alone: $base_total ns/frame"
# AF_XDP against the bridge: frames per second per core spent (the inverse of the forwarder's
# ns per frame; goal >= 2) and the ping round trips (goal <= 1).
fwd_ns() { awk -v t="$(median_col "$1" 7)" -v b="$base_total" 'BEGIN { if (t == "n/a") print "n/a"; else print t - b }'; }
awk -v xb="$(fwd_ns bridge)" -v xx="$(fwd_ns afxdp)" -v lb="$(median_col bridge 5)" -v lx="$(median_col afxdp 5)" \
    -v pb="$(median_col bridge 6)" -v px="$(median_col afxdp 6)" 'BEGIN {
    r = (xb + 0 > 0 && xx + 0 > 0) ? sprintf("%.2f", xb / xx) : "n/a"
    l = (lb + 0 > 0 && lx ~ /^[0-9.]+$/) ? sprintf("%.2f", lx / lb) : "n/a"
    q = (pb + 0 > 0 && px ~ /^[0-9.]+$/) ? sprintf("%.2f", px / pb) : "n/a"
    printf "  afxdp / bridge: frames per second per core spent %sx (goal >= 2); ping median %sx, p99 %sx of the bridge'"'"'s (goal <= 1)\n", r, l, q }'
# Two builds side by side (SY_BASE): each mode's forwarder CPU a frame and ping median over
# its -base row's.
for m in "${MODES[@]}"; do
    [ "${m%-base}" != "$m" ] || [[ " ${MODES[*]} " != *" $m-base "* ]] && continue
    awk -v m="$m" -v x="$(fwd_ns "$m")" -v y="$(fwd_ns "$m-base")" -v l="$(median_col "$m" 5)" -v lb="$(median_col "$m-base" 5)" 'BEGIN {
        printf "  %s / %s-base: forwarder CPU a frame %s, ping median %s\n", m, m,
            (x + 0 > 0 && y + 0 > 0) ? sprintf("%.2fx", x / y) : "n/a", (l + 0 > 0 && lb + 0 > 0) ? sprintf("%.2fx", l / lb) : "n/a" }'
done
echo "   load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
