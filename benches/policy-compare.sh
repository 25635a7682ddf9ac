#!/usr/bin/env bash
# The policy stage as a user sees it, with port I/O (docs/policy.md "Numbers"): one
# `switchyard pmd --fwd switch` binary on two ports, without and with `--policy`, side by side
# in interleaved rounds (none, policy, none, policy, ...) so that a machine whose load drifts
# shifts both alike. Prints every run's Mpps (frames received per second, both ports), the
# medians, the ratio policy/none, and the worker's CPU time per frame; it asserts nothing.
#
# usage: benches/policy-compare.sh [ROUNDS] [SECONDS] [BINARY]   (default 5 rounds of 3 s,
#        target/release/switchyard)
# Traffic (benches/gen_pcaps.py --flows): FLOWS (default 100,000) distinct UDP connections
# from host A on port p0 to host B on p1, and B's replies, 64-byte frames, on infinite pcap
# ports (and on DPDK net_pcap ports when DPDK is installed and DPDK=1, on 2 MiB hugepages as
# benches/pmd-compare.sh gives them, benches/hugepages.sh: `--no-huge` only as its printed
# fallback). The policy: p1 isolated for ingress by RULES (default 1,000)
# rules, a /32 peer and a UDP port each, rule 500 the one that allows A's connections; both
# ports are VM ports as the plan makes them (`allowed_macs` and `allowed_ips`); a 131,072-entry
# connection table. Every connection is checked against the rules once, on the first pass
# over the capture (FLOWS frames a port, a few tens of milliseconds), and established after.
# With TAG=VID, p0 is an uplink instead: a trunk of VLAN VID without spoof filters, A's frames
# tagged (gen_pcaps.py --vlan), and p1 an access port of that VLAN (in both runs: the run
# without policy gets the VLANs alone, as it gets no filter without TAG).
# One forwarding core: CORE (default the last one). Both contenders run with `pmd --busy-poll`
# (the worker never sleeps); BUSY=0 runs them with pmd's default back-off instead.
set -euo pipefail
ROUNDS=${1:-5} SECS=${2:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${3:-$ROOT/target/release/switchyard}
FLOWS=${FLOWS:-100000} RULES=${RULES:-1000}
CORE=${CORE:-$(($(nproc) - 1))}
POLL=(--busy-poll)
if [ "${BUSY:-1}" = 0 ]; then POLL=(); fi
WORK=$(mktemp -d)
# shellcheck source=benches/hugepages.sh
. "$ROOT/benches/hugepages.sh"
trap 'huge_release; rm -rf "$WORK"' EXIT
TAG=${TAG:-}
python3 "$ROOT/benches/gen_pcaps.py" --flows "$FLOWS" ${TAG:+--vlan "$TAG"} "$WORK/a.pcap" "$WORK/b.pcap"
# The ports as both runs have them; the policy run adds p1's rules.
ports() {
    echo "conntrack_size: 131072"
    echo "ports:"
    echo "  p0:"
    if [ -n "$TAG" ]; then
        echo "    trunks: [$TAG]"
    else
        echo "    allowed_macs: ['02:00:0a:00:00:01']"
        echo "    allowed_ips: [10.0.0.1]"
    fi
    echo "  p1:"
    echo "    allowed_macs: ['02:00:0b:00:00:01']"
    echo "    allowed_ips: [10.1.0.0, 10.1.0.1, 10.1.0.2, 10.1.0.3]"
    if [ -n "$TAG" ]; then echo "    tag: $TAG"; fi
}
if [ -n "$TAG" ]; then
    printf 'ports:\n  p0: {trunks: [%s]}\n  p1: {tag: %s}\n' "$TAG" "$TAG" >"$WORK/none.yaml"
    NONE=(--policy "$WORK/none.yaml")
else
    NONE=()
fi
{
    ports
    echo "    policy:"
    echo "      ingress:"
    echo "        rules:"
    for ((r = 0; r < RULES; r++)); do
        if ((r == RULES / 2)); then
            echo "        - {name: r$r, peers: [{cidr: 10.0.0.1/32}], ports: [{protocol: UDP, port: 53}]}"
        else
            echo "        - {name: r$r, peers: [{cidr: 11.0.$((r / 256)).$((r % 256))/32}], ports: [{protocol: UDP, port: $((1000 + r))}]}"
        fi
    done
} >"$WORK/policy.yaml"

# One run: "Mpps cpu-ns-a-frame drops" from the JSON summary.
run() { # args...
    "$BIN" pmd "${POLL[@]}" --seconds "$SECS" --json --lcores "$CORE" "$@" 2>"$WORK/err" | tail -1 |
        python3 -c "
import json, sys
j = json.load(sys.stdin)
print('%.3f %.1f %d' % (j['rx_pps'] / 1e6, j.get('cpu_ns_per_frame', float('nan')), sum(p['drops'] for p in j['ports'])))" ||
        { echo "failed: $(tail -3 "$WORK/err")" >&2; echo "nan nan 0"; }
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

compare() { # label port-args...
    local label=$1 i r none="" pol="" ncpu="" pcpu="" drops=0
    shift
    for ((i = 0; i < ROUNDS; i++)); do
        read -r -a r <<<"$(run --fwd switch "$@" "${NONE[@]}")"
        none+=" ${r[0]}" ncpu+=" ${r[1]}"
        read -r -a r <<<"$(run --fwd switch "$@" --policy "$WORK/policy.yaml")"
        pol+=" ${r[0]}" pcpu+=" ${r[1]}" drops=$((drops + r[2]))
    done
    local mn mp
    mn=$(median <<<"$none")
    mp=$(median <<<"$pol")
    printf '%s\n  none   Mpps%s (median %s; CPU ns a frame, median %s)\n' "$label" "$none" "$mn" "$(median <<<"$ncpu")"
    printf '  policy Mpps%s (median %s; CPU ns a frame, median %s; drops %s)\n' "$pol" "$mp" "$(median <<<"$pcpu")" "$drops"
    printf '  policy/none %s\n' "$(awk -v a="$mp" -v b="$mn" 'BEGIN { printf "%.3f", a / b }')"
}

echo "== $ROUNDS rounds of $SECS s, none and policy interleaved, core $CORE, ${POLL[*]:-default back-off}; $FLOWS flows, $RULES rules${TAG:+, p0 a trunk of VLAN $TAG}; load: $(cut -d' ' -f1-3 /proc/loadavg)"
compare "switch pcap, $FLOWS flows" --port "pcap:$WORK/a.pcap,infinite" --port "pcap:$WORK/b.pcap,infinite"
if [ "${DPDK:-0}" = 1 ] && pkg-config --exists libdpdk 2>/dev/null; then
    # The pool: a frame of each connection in each port's RX ring and bursts. switchyard asks
    # EAL for 256 MiB plus 2,560 bytes an mbuf (ports/src/factory.rs `eal_options`): that many
    # 2 MiB pages, and a few more.
    MBUFS=$((2 * FLOWS + 16384))
    huge_setup $(((256 + (MBUFS * 2560 + 1048575) / 1048576) / 2 + 16))
    SY_HUGE=()
    [ "$HUGE" = 0 ] && SY_HUGE=(--no-huge)
    compare "switch dpdk:net_pcap, $FLOWS flows ($HUGE_NOTE)" --mbufs "$MBUFS" "${SY_HUGE[@]}" \
        --port "dpdk:net_pcap0,rx_pcap=$WORK/a.pcap,infinite_rx=1" \
        --port "dpdk:net_pcap1,rx_pcap=$WORK/b.pcap,infinite_rx=1"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
