#!/usr/bin/env bash
# Two builds of `switchyard pmd` side by side (a change against its base): the same ports and
# mode, OLD and NEW interleaved (OLD, NEW, OLD, NEW, ...) so that a machine whose load drifts
# shifts both alike. For each case it prints every run's Mpps (frames received per second,
# summed over the ports), the medians and the ratio NEW/OLD; it asserts nothing.
#
# usage: benches/pmd-ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS]   (default 5 rounds of 2 s)
# Cases: switch and io on infinite pcap ports (256 MACs each way, benches/gen_pcaps.py), io on
# DPDK net_pcap ports (when DPDK is installed; as root, EAL runs without hugepages, --no-huge
# as the unit tests run it: the run is in a private mount namespace with the hugetlbfs mounts
# taken away), switch on the same DPDK ports on 2 MiB hugepages as a deployment runs them
# (benches/hugepages.sh; HUGEPAGES=0 leaves the case out), txonly over a veth pair on AF_PACKET
# ports (as root; the rate is what is sent, since txonly does not receive), and switch between
# two AF_PACKET veth ports while benches/pktsend.c floods one of them from the other core (as
# root). One forwarding core: CORE (default the last one).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,9p' "$0"; exit 2; }
OLD=$1 NEW=$2 ROUNDS=${3:-5} SECS=${4:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CORE=${CORE:-$(($(nproc) - 1))}
WORK=$(mktemp -d)
VETH=sab$$
# shellcheck source=benches/hugepages.sh
. "$ROOT/benches/hugepages.sh"
GEN_PID=
cleanup() {
    [ -n "$GEN_PID" ] && kill "$GEN_PID" 2>/dev/null
    ip link del "${VETH}a" 2>/dev/null || true
    ip link del "${VETH}c" 2>/dev/null || true
    huge_release
    rm -rf "$WORK"
}
trap cleanup EXIT
python3 "$ROOT/benches/gen_pcaps.py" --macs 256 "$WORK/a.pcap" "$WORK/b.pcap"

# Mpps of one run: RATE (rx_pps, or tx_pps) of the JSON summary; WRAP runs the binary.
RATE=rx_pps
WRAP=()
GEN=()
run() { # binary args...
    local bin=$1
    shift
    # A load generator (GEN), when the case has one, runs through the whole run.
    if [ ${#GEN[@]} -gt 0 ]; then
        "${GEN[@]}" >/dev/null &
        GEN_PID=$!
    fi
    "${WRAP[@]}" "$bin" pmd --busy-poll --seconds "$SECS" --json --lcores "$CORE" "$@" 2>"$WORK/err" | tail -1 |
        python3 -c "import json,sys; print('%.3f' % (json.load(sys.stdin)['$RATE']/1e6))" ||
        { echo "failed: $(tail -3 "$WORK/err")" >&2; echo nan; }
    if [ -n "$GEN_PID" ]; then
        kill "$GEN_PID" 2>/dev/null
        wait "$GEN_PID" 2>/dev/null || true
        GEN_PID=
    fi
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

case_ab() { # label args...
    local label=$1 old="" new="" i
    shift
    for ((i = 0; i < ROUNDS; i++)); do
        old+=" $(run "$OLD" "$@")"
        new+=" $(run "$NEW" "$@")"
    done
    local mo mn
    mo=$(median <<<"$old")
    mn=$(median <<<"$new")
    printf '%-28s old%s | new%s | median old %s new %s Mpps, new/old %s\n' "$label" "$old" "$new" "$mo" "$mn" \
        "$(awk -v a="$mn" -v b="$mo" 'BEGIN { printf "%.3f", a / b }')"
}

pcaps=(--port "pcap:$WORK/a.pcap,infinite" --port "pcap:$WORK/b.pcap,infinite")
echo "== $ROUNDS rounds of $SECS s, old and new interleaved, core $CORE"
case_ab "switch pcap 256" --fwd switch "${pcaps[@]}"
case_ab "io pcap 256" --fwd io "${pcaps[@]}"
if pkg-config --exists libdpdk 2>/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        WRAP=(unshare -m sh -c 'awk '"'"'$3 == "hugetlbfs" { print $2 }'"'"' /proc/mounts | xargs -r -n1 umount; exec "$@"' sh)
    fi
    case_ab "io dpdk:net_pcap 256" --fwd io \
        --port "dpdk:net_pcap0,rx_pcap=$WORK/a.pcap,infinite_rx=1" \
        --port "dpdk:net_pcap1,rx_pcap=$WORK/b.pcap,infinite_rx=1"
    WRAP=()
    huge_setup "${HUGE_PAGES:-512}"
    if [ "$HUGE" = 1 ]; then
        case_ab "switch dpdk:net_pcap huge" --fwd switch \
            --port "dpdk:net_pcap0,rx_pcap=$WORK/a.pcap,infinite_rx=1" \
            --port "dpdk:net_pcap1,rx_pcap=$WORK/b.pcap,infinite_rx=1"
    fi
fi
if [ "$(id -u)" = 0 ] && ip link add "${VETH}a" type veth peer name "${VETH}b" 2>/dev/null; then
    ip link set "${VETH}a" up
    ip link set "${VETH}b" up
    RATE=tx_pps
    case_ab "txonly afpacket veth" --fwd txonly --port "afpacket:${VETH}a" --port "afpacket:${VETH}b"
    RATE=rx_pps
    if ip link add "${VETH}c" type veth peer name "${VETH}d" 2>/dev/null && cc -O2 -o "$WORK/pktsend" "$ROOT/benches/pktsend.c"; then
        ip link set "${VETH}c" up
        ip link set "${VETH}d" up
        # Frames into port a (from its peer b) for the MAC behind port c, as fast as pktsend
        # can, on the other core; the rate is what the switch received.
        GEN=(taskset -c $((CORE == 0 ? 1 : 0)) "$WORK/pktsend" "${VETH}b" "$(cat "/sys/class/net/${VETH}d/address")" 0 $((SECS + 2)))
        case_ab "switch afpacket veth" --fwd switch --port "afpacket:${VETH}a" --port "afpacket:${VETH}c"
        GEN=()
    fi
fi
