#!/usr/bin/env bash
# Side-by-side forwarding benchmark: switchyard pmd (io and switch modes, on pcap ports and on
# DPDK net_pcap ports) against dpdk-testpmd io mode, on the same captures, one forwarding core
# each, one contender at a time. It prints Mpps (frames received per second, summed over both
# ports) for each and the ratios; it asserts nothing.
#
# usage: benches/pmd-compare.sh [SECONDS]     (default 5 seconds per contender)
# env:   BIG_MACS=N     MACs each way of the big variant (default 1048576; 0 skips it)
#        DPDK=0         skip everything DPDK (testpmd and dpdk: ports)
#        CORE=C         the forwarding core of one-core runs (default: the last available one)
#        CARGO_TARGET_DIR as cargo uses it
#
# Captures: 60-byte frames as captured (64 bytes on the wire with the FCS), UDP/IPv4; port 0's
# capture has N distinct source MACs each sending to one of N MACs that are the sources of port
# 1's capture, and the reverse (benches/gen_pcaps.py). N = 256, then BIG_MACS.
set -euo pipefail

SECS=${1:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIG_MACS=${BIG_MACS:-1048576}
NCPU=$(nproc)
CORE=${CORE:-$((NCPU - 1))}
MAIN_CORE=0
[ "$CORE" = 0 ] && MAIN_CORE=$((NCPU > 1 ? 1 : 0))

have_dpdk=0
if [ "${DPDK:-1}" != 0 ] && pkg-config --exists libdpdk 2>/dev/null; then
    have_dpdk=1
fi
have_testpmd=0
if [ "${DPDK:-1}" != 0 ] && command -v dpdk-testpmd >/dev/null; then
    have_testpmd=1
fi

features=()
[ "$have_dpdk" = 1 ] && features=(--features dpdk)
echo "== building: cargo build --release ${features[*]}"
(cd "$ROOT" && cargo build --release -j "$NCPU" "${features[@]}" >&2)
BIN=$TARGET/release/switchyard

WORK=$(mktemp -d /tmp/pmd-compare.XXXXXX)
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT

echo "== captures in $WORK"
python3 "$ROOT/benches/gen_pcaps.py" --macs 256 "$WORK/a256.pcap" "$WORK/b256.pcap"
if [ "$BIG_MACS" != 0 ]; then
    python3 "$ROOT/benches/gen_pcaps.py" --macs "$BIG_MACS" "$WORK/abig.pcap" "$WORK/bbig.pcap"
fi

declare -A RATE
RESULTS=()

record() { # label mpps command...
    local label=$1 mpps=$2
    shift 2
    RATE[$label]=$mpps
    RESULTS+=("$(printf '%-34s %9s Mpps' "$label" "$mpps")")
    printf '%-34s %9s Mpps   %s\n' "$label" "$mpps" "$*"
}

# switchyard pmd ... --json: the rate is rx_pps of the last line.
sy() { # label args...
    local label=$1
    shift
    local cmd=("$BIN" pmd --busy-poll --seconds "$SECS" --json "$@")
    local out
    if ! out=$("${cmd[@]}" 2>"$WORK/err"); then
        echo "$label: failed: $(tail -3 "$WORK/err")" >&2
        record "$label" "n/a" "${cmd[@]}"
        return
    fi
    local mpps
    mpps=$(tail -1 <<<"$out" | python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["rx_pps"]/1e6))')
    record "$label" "$mpps" "${cmd[@]}"
    grep -E "avg processing cycles per packet|drops: " <<<"$out" | sed 's/^/      /' || true
}

# dpdk-testpmd io mode, interactive through a pipe: start, warm up 1 s, show port stats, wait
# SECS, show port stats again; the second show's Rx-pps (testpmd's own rate since the first
# show) summed over both ports.
# net_pcap's infinite_rx holds the whole capture in mbufs, so a big capture needs a big pool
# (of small mbufs) and time to load.
testpmd() { # label a.pcap b.pcap frames-per-capture
    local label=$1 a=$2 b=$3 n=$4
    local mem=(-m 1024) pool=(--total-num-mbufs=32768) settle=1
    if [ "$n" -gt 4096 ]; then
        mem=(-m 3072)
        pool=(--total-num-mbufs=$((2 * n + 65536)) --mbuf-size=256)
        settle=8
    fi
    local cmd=(dpdk-testpmd --no-huge "${mem[@]}" --no-pci --file-prefix "pmdcmp$$"
        --vdev "net_pcap0,rx_pcap=$a,infinite_rx=1" --vdev "net_pcap1,rx_pcap=$b,infinite_rx=1"
        -l "$MAIN_CORE,$CORE" -- -i --forward-mode=io --nb-cores=1 "${pool[@]}")
    { sleep "$settle"; echo start; sleep 1; echo "show port stats all"; sleep "$SECS"
      echo "show port stats all"; echo stop; echo quit; } | timeout $((SECS + 60)) "${cmd[@]}" >"$WORK/testpmd.out" 2>&1 || true
    local mpps
    mpps=$(grep -E '^ +Rx-pps:' "$WORK/testpmd.out" | tail -2 | awk '{s += $2} END {if (NR == 2 && s > 0) printf "%.3f", s / 1e6; else print "n/a"}')
    [ "$mpps" = n/a ] && tail -5 "$WORK/testpmd.out" >&2
    record "$label" "$mpps" "${cmd[@]}"
}

pc() { echo "--port pcap:$1,infinite"; }

echo "== one forwarding core (core $CORE), $SECS s each"
# shellcheck disable=SC2046
sy "sy io 256" --fwd io --lcores "$CORE" $(pc "$WORK/a256.pcap") $(pc "$WORK/b256.pcap")
# shellcheck disable=SC2046
sy "sy switch 256" --fwd switch --lcores "$CORE" $(pc "$WORK/a256.pcap") $(pc "$WORK/b256.pcap")
if [ "$have_testpmd" = 1 ]; then
    testpmd "testpmd io 256" "$WORK/a256.pcap" "$WORK/b256.pcap" 256
fi
if [ "$have_dpdk" = 1 ]; then
    sy "sy switch dpdk:net_pcap 256" --fwd switch --lcores "$CORE" \
        --port "dpdk:net_pcap0,rx_pcap=$WORK/a256.pcap,infinite_rx=1" \
        --port "dpdk:net_pcap1,rx_pcap=$WORK/b256.pcap,infinite_rx=1"
    sy "sy io dpdk:net_pcap 256" --fwd io --lcores "$CORE" \
        --port "dpdk:net_pcap0,rx_pcap=$WORK/a256.pcap,infinite_rx=1" \
        --port "dpdk:net_pcap1,rx_pcap=$WORK/b256.pcap,infinite_rx=1"
fi
if [ "$BIG_MACS" != 0 ]; then
    # shellcheck disable=SC2046
    sy "sy io $BIG_MACS" --fwd io --lcores "$CORE" $(pc "$WORK/abig.pcap") $(pc "$WORK/bbig.pcap")
    # Room for both directions' MACs (2 x BIG_MACS) in the MAC table.
    # shellcheck disable=SC2046
    sy "sy switch $BIG_MACS" --fwd switch --lcores "$CORE" --mac-table-size $((BIG_MACS * 4)) \
        $(pc "$WORK/abig.pcap") $(pc "$WORK/bbig.pcap")
    if [ "$have_testpmd" = 1 ]; then
        testpmd "testpmd io $BIG_MACS" "$WORK/abig.pcap" "$WORK/bbig.pcap" "$BIG_MACS"
    fi
fi

if [ "$NCPU" -ge 2 ]; then
    echo "== two workers on cores 0,1 (one RX queue each)"
    [ "$NCPU" = 2 ] && echo "   (this machine has only 2 cores: the second worker shares a core with the main thread and everything else)"
    # shellcheck disable=SC2046
    sy "sy switch 256 x2 workers" --fwd switch --lcores 0,1 $(pc "$WORK/a256.pcap") $(pc "$WORK/b256.pcap")
    # shellcheck disable=SC2046
    sy "sy io 256 x2 workers" --fwd io --lcores 0,1 $(pc "$WORK/a256.pcap") $(pc "$WORK/b256.pcap")
fi

ratio() { # label num den
    local n=${RATE[$2]:-} d=${RATE[$3]:-}
    if [[ $n =~ ^[0-9.]+$ && $d =~ ^[0-9.]+$ ]]; then
        printf '  %-42s %6.3f   (%s / %s)\n' "$1" "$(awk -v n="$n" -v d="$d" 'BEGIN {print (d > 0 ? n / d : 0)}')" "$2" "$3"
    fi
}

echo
echo "== results ($SECS s each, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
printf '%s\n' "${RESULTS[@]}"
echo "== ratios"
ratio "switch / io (256 MACs)" "sy switch 256" "sy io 256"
ratio "switch / testpmd io (256 MACs)" "sy switch 256" "testpmd io 256"
ratio "io / testpmd io (256 MACs)" "sy io 256" "testpmd io 256"
ratio "switch on dpdk ports / testpmd io" "sy switch dpdk:net_pcap 256" "testpmd io 256"
ratio "switch $BIG_MACS MACs / 256 MACs" "sy switch $BIG_MACS" "sy switch 256"
ratio "switch / io ($BIG_MACS MACs)" "sy switch $BIG_MACS" "sy io $BIG_MACS"
ratio "switch / testpmd io ($BIG_MACS MACs)" "sy switch $BIG_MACS" "testpmd io $BIG_MACS"
ratio "switch: 2 workers / 1 worker" "sy switch 256 x2 workers" "sy switch 256"
ratio "io: 2 workers / 1 worker" "sy io 256 x2 workers" "sy io 256"
