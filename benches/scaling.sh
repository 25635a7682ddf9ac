#!/usr/bin/env bash
# Scaling: switchyard pmd --fwd switch with one worker and with two, on the same ports, in
# interleaved rounds, next to the ceiling the machine gives two cores at that moment: two
# separate one-worker processes at once, one per core, which share nothing but the machine.
# Prints Mpps and busy cycles a frame for each, the medians and three ratios: two workers /
# one (the goal: at least 1.8), two processes / one (what the machine gives; on a VM whose
# vCPUs share a physical core, or under other load, well under 2) and two workers / two
# processes (what the switch's shared state costs). It asserts nothing.
#
# usage: benches/scaling.sh [SECONDS]     (default 5 s a run)
# env:   SWITCHYARD=P    the switchyard binary (default target/release/switchyard, built with
#                        --features dpdk)
#        CORES=A,B       the two cores (default 0,1); the one-worker runs use B
#        ROUNDS=N        rounds (default 3); the order of the three runs turns round every
#                        other round
#        DPDK=0          skip the dpdk: part (a build without --features dpdk)
#        VHOST=0         skip the vhost-user part
#        HUGEPAGES=0     every DPDK process with --no-huge (see benches/hugepages.sh)
#
# dpdk: ports: two net_pcap ethdevs, each with two RX queues that replay the same capture for
# ever (rx_pcap given twice, infinite_rx=1; benches/gen_pcaps.py, 256 MACs a side, each
# side's frames addressed to the other side's MACs, so the switch learns 512 MACs and forwards
# unicast). switchyard opens as many RX queues of an ethdev as it has workers (the RSS case:
# one queue of every port per worker), so one worker polls queue 0 of both ports and two
# workers one queue of each port each; TX goes to net_pcap's drop function (no tx_pcap), after
# the whole pipeline (learning, lookup, counters).
# pcap ports: switchyard's own `pcap:FILE,infinite` ports (one RX queue each), the same two
# captures: with two workers each polls one port (the one-port-per-worker case).
# In both the generator is the port's RX itself, inside the polling worker, so nothing else
# of the benchmark competes for the cores and each worker is its own bottleneck. The workers
# share the MAC table, the port counters and the buffer pool (docs/architecture.md).
#
# vhost-user: benches/vm2vm.sh with QUEUES=2 WORKERS2=1 (two queue pairs on both VM ports and
# both switch ports; the "VMs" are still one testpmd core): "switchyard vhost switch" (one
# worker on core B) against "switchyard vhost switch, 2 workers" (cores A and B, the second
# sharing core A with the VMs). On a 2-core machine the VMs' single core bounds the rate of
# both, so the Mpps ratio cannot show the switch's scaling there; the capacity (each worker's
# frames / busy seconds, summed) says what the workers would carry if the switch were the
# bottleneck.
set -euo pipefail

SECS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/hugepages.sh
. "$ROOT/benches/hugepages.sh"
BIN=${SWITCHYARD:-$ROOT/target/release/switchyard}
CORES=${CORES:-0,1}
ONE=${CORES#*,}
ROUNDS=${ROUNDS:-3}
[ -x "$BIN" ] || { echo "switchyard binary $BIN not found (set SWITCHYARD=)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/scaling.XXXXXX)
SW_PID=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [ -z "$SW_PID" ] || kill "$SW_PID" 2>/dev/null || true
    huge_release
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 "$ROOT/benches/gen_pcaps.py" --macs 256 "$WORK/a.pcap" "$WORK/b.pcap"
huge_setup "${HUGE_PAGES:-1024}"
SY_HUGE=()
[ "$HUGE" = 0 ] && SY_HUGE=(--no-huge)

declare -A RUNS CYC
LABELS=()
median_of() {
    tr ' ' '\n' <<<"$1" | { grep -E '^[0-9.]+$' || true; } | sort -n |
        awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

# The ports of each part, one word per --port argument ({} is replaced by a per-process index
# for the DPDK vdev names, which must differ between processes only in name).
PORTS_DPDK=("dpdk:net_pcap0,rx_pcap=$WORK/a.pcap,rx_pcap=$WORK/a.pcap,infinite_rx=1"
    "dpdk:net_pcap1,rx_pcap=$WORK/b.pcap,rx_pcap=$WORK/b.pcap,infinite_rx=1")
PORTS_PCAP=("pcap:$WORK/a.pcap,infinite" "pcap:$WORK/b.pcap,infinite")

# pmd CORES OUT PORTS...: one switchyard pmd on CORES (one worker each), JSON summary in OUT.
pmd() {
    local cores=$1 out=$2
    shift 2
    local ports=() p
    for p in "$@"; do ports+=(--port "$p"); done
    CMD=(taskset -c "$cores" "$BIN" pmd --busy-poll --seconds "$SECS" --json "${SY_HUGE[@]}" --lcores "$cores"
        --fwd switch "${ports[@]}")
    "${CMD[@]}" >"$out" 2>"$out.err" </dev/null
}

# The rate (rx_pps, Mpps) and busy cycles a frame over all workers of a pmd's JSON summary.
rate_of() {
    tail -1 "$1" | python3 -c '
import json, sys
j = json.load(sys.stdin)
b = sum(w["busy_cycles"] for w in j["workers"]); r = sum(w["rx"] for w in j["workers"])
print("%.3f %s" % (j["rx_pps"] / 1e6, "%.1f" % (b / r) if r else "n/a"))'
}

note() { # label mpps cyc command...
    local label=$1 mpps=$2 cyc=$3
    shift 3
    [ -n "${RUNS[$label]+x}" ] || LABELS+=("$label")
    RUNS[$label]="${RUNS[$label]:-} $mpps"
    CYC[$label]="${CYC[$label]:-} $cyc"
    printf '%-40s %9s Mpps %8s busy cycles/frame   (round %d, load average %s)\n' "$label" "$mpps" "$cyc" "$ROUND" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "      $*"
}

# run PART LABEL KIND: KIND 1 (one worker on the second core), 2 (two workers, both cores) or
# 1+1 (two separate one-worker processes at once, one per core, sharing nothing but the
# machine: the ceiling two cores of this machine give at that moment; rates summed).
run() {
    local part=$1 label=$2 kind=$3
    local -n ports="PORTS_$part"
    local mpps=n/a cyc=n/a
    case $kind in
        1 | 2)
            local cores=$ONE
            [ "$kind" = 2 ] && cores=$CORES
            if pmd "$cores" "$WORK/out" "${ports[@]}"; then
                read -r mpps cyc < <(rate_of "$WORK/out")
            else
                echo "$label: failed: $(tail -3 "$WORK/out.err")" >&2
            fi
            note "$label" "$mpps" "$cyc" "${CMD[*]}"
            grep -E '^ *(pmd thread|packets received|avg processing)' "$WORK/out" | sed 's/^ */      /' || true
            ;;
        1+1)
            pmd "${CORES%,*}" "$WORK/out0" "${ports[@]}" &
            local p0=$!
            SW_PID=$p0
            local ok=1
            pmd "$ONE" "$WORK/out1" "${ports[@]}" || ok=0
            wait "$p0" || ok=0
            SW_PID=
            if [ "$ok" = 1 ]; then
                read -r mpps cyc < <({ rate_of "$WORK/out0"; rate_of "$WORK/out1"; } |
                    awk '{m += $1; c += $2} END {printf "%.3f %.1f\n", m, c / NR}')
            else
                echo "$label: failed: $(tail -3 "$WORK/out0.err" "$WORK/out1.err")" >&2
            fi
            note "$label" "$mpps" "$cyc" "the one-worker command on core ${CORES%,*} and on core $ONE at once"
            ;;
    esac
}

# ratio LABEL NUM DEN: of the medians, and per round.
ratio() {
    local n d per
    n=$(median_of "${RUNS[$2]:-}")
    d=$(median_of "${RUNS[$3]:-}")
    per=$(awk -v n="${RUNS[$2]:-}" -v d="${RUNS[$3]:-}" 'BEGIN {
        k = split(n, a, " "); split(d, b, " ");
        for (i = 1; i <= k; i++) printf " %s", (a[i] ~ /^[0-9.]+$/ && b[i] ~ /^[0-9.]+$/ && b[i] > 0) ? sprintf("%.2f", a[i] / b[i]) : "n/a" }')
    if [[ $n =~ ^[0-9.]+$ && $d =~ ^[0-9.]+$ ]]; then
        printf '  %-58s %6.3f   (per round:%s)\n' "$1" "$(awk -v a="$n" -v b="$d" 'BEGIN {print a / b}')" "$per"
    else
        printf '  %-58s    n/a\n' "$1"
    fi
}

for part in DPDK PCAP; do
    if [ "$part" = DPDK ]; then
        what="dpdk:net_pcap ports, 2 RX queues each (one per worker)"
    else
        what="switchyard's own pcap ports (one queue each: one port per worker)"
    fi
    [ "$part" = PCAP ] || [ "${DPDK:-1}" != 0 ] || continue
    echo
    echo "== scaling: $what, 60-byte frames, $SECS s a run, cores $CORES"
    echo "   load average: $(cut -d' ' -f1-3 /proc/loadavg); $HUGE_NOTE"
    tag=${part,,}
    for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
        order=(1 2 1+1)
        ((ROUND % 2)) || order=(1+1 2 1)
        for k in "${order[@]}"; do
            case $k in
                1) run "$part" "$tag, 1 worker" 1 ;;
                2) run "$part" "$tag, 2 workers" 2 ;;
                1+1) run "$part" "$tag, 2 processes x 1 worker" 1+1 ;;
            esac
        done
    done
done
echo
echo "== results (median of $ROUNDS rounds)"
for l in "${LABELS[@]}"; do
    printf '%-40s %9s Mpps %8s busy cycles/frame   (rounds:%s; cycles:%s)\n' "$l" "$(median_of "${RUNS[$l]}")" \
        "$(median_of "${CYC[$l]}")" "${RUNS[$l]}" "${CYC[$l]}"
done
echo "== ratios"
for tag in dpdk pcap; do
    [ -n "${RUNS[$tag, 1 worker]+x}" ] || continue
    ratio "$tag: 2 workers / 1 worker (goal >= 1.8)" "$tag, 2 workers" "$tag, 1 worker"
    ratio "$tag: 2 processes / 1 worker (what the machine gives)" "$tag, 2 processes x 1 worker" "$tag, 1 worker"
    ratio "$tag: 2 workers / 2 processes (the switch's own scaling)" "$tag, 2 workers" "$tag, 2 processes x 1 worker"
done
echo "   load average: $(cut -d' ' -f1-3 /proc/loadavg)"

if [ "${VHOST:-1}" != 0 ]; then
    echo
    echo "== scaling, part 2: vhost-user, two queue pairs a port (benches/vm2vm.sh)"
    # vm2vm.sh reserves and releases its own hugepages.
    huge_release
    VM_CORE=${CORES%,*} SW_CORE=$ONE QUEUES=2 WORKERS2=1 DEFAULT=0 OVS=0 TP_VHOST=0 NET_VHOST=0 IO=0 \
        ROUNDS="$ROUNDS" SWITCHYARD="$BIN" "$ROOT/benches/vm2vm.sh" "$SECS"
fi
