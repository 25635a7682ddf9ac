#!/usr/bin/env bash
# Side-by-side forwarding benchmark: switchyard pmd (io and switch modes, on pcap ports and on
# DPDK net_pcap ports) against dpdk-testpmd io mode and Open vSwitch with DPDK (NORMAL action),
# on the same captures, one forwarding core each, one contender at a time. It prints Mpps (frames received per second, summed over both
# ports) for each and the ratios; it asserts nothing.
# Next to each rate: the forwarding thread's CPU time per frame (ns; switchyard's worker from
# getrusage, testpmd's and OVS's forwarding thread from /proc/PID/task/TID/schedstat over the
# measured interval), and the ratios of the rates that these give (1e3 / ns = Mpps per
# CPU-second). On a machine shared with other work the wall-clock rates fall with the share of
# the core the thread gets, while the CPU time per frame stays the cost of a frame: compare
# those there.
#
# usage: benches/pmd-compare.sh [SECONDS]     (default 5 seconds per contender)
# env:   BIG_MACS=N     MACs each way of the big variant (default 1048576; 0 skips it)
#        MID_MACS=N     MACs each way of the variant OVS-DPDK can hold (default 32768; 0 skips it):
#                       OVS, testpmd io and switchyard switch run on it too (see ovs_dpdk below)
#        DPDK=0         skip everything DPDK (testpmd, OVS-DPDK and dpdk: ports)
#        OVS=0          skip OVS-DPDK
#        OVS_WARMUP=S   longest wait for OVS-DPDK to learn all MACs (default 60 s)
#        OVS_VSWITCHD=P the DPDK build of ovs-vswitchd (default Debian's
#                       /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk, package
#                       openvswitch-switch-dpdk; the ovs-vswitchd alternative is left alone)
#        CORE=C         the forwarding core of one-core runs (default: the last available one)
#        HUGEPAGES=0    every DPDK contender with --no-huge (default: all on 2 MiB hugepages when
#                       the machine can: as root the script mounts a hugetlbfs and reserves
#                       HUGE_PAGES pages, default 1024, giving back what it added at the end;
#                       otherwise it falls back to --no-huge for all and says so)
#        CARGO_TARGET_DIR as cargo uses it
#
# Captures: 60-byte frames as captured (64 bytes on the wire with the FCS), UDP/IPv4; port 0's
# capture has N distinct source MACs each sending to one of N MACs that are the sources of port
# 1's capture, and the reverse (benches/gen_pcaps.py). N = 256, then BIG_MACS, then MID_MACS.
set -euo pipefail

SECS=${1:-5}
# shellcheck source=benches/hugepages.sh
. "$(dirname "$0")/hugepages.sh"
# shellcheck source=benches/ovs.sh
. "$(dirname "$0")/ovs.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIG_MACS=${BIG_MACS:-1048576}
MID_MACS=${MID_MACS:-32768}
OVS_VSWITCHD=${OVS_VSWITCHD:-/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk}
OVS_SCHEMA=${OVS_SCHEMA:-/usr/share/openvswitch/vswitch.ovsschema}
# shellcheck source=benches/one-core.sh
. "$(dirname "$0")/one-core.sh"

have_dpdk=0
if [ "${DPDK:-1}" != 0 ] && pkg-config --exists libdpdk 2>/dev/null; then
    have_dpdk=1
fi
have_ovs=0
if [ "${DPDK:-1}" != 0 ] && [ "${OVS:-1}" != 0 ] && [ -x "$OVS_VSWITCHD" ] && [ -r "$OVS_SCHEMA" ] &&
    command -v ovsdb-tool >/dev/null && command -v ovsdb-server >/dev/null &&
    command -v ovs-vsctl >/dev/null && command -v ovs-appctl >/dev/null; then
    have_ovs=1
elif [ "${DPDK:-1}" != 0 ] && [ "${OVS:-1}" != 0 ]; then
    echo "== OVS-DPDK: $OVS_VSWITCHD or Open vSwitch's tools not found (Debian: apt-get install openvswitch-switch-dpdk): skipped"
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
OVS_DIR=
# Stops the private Open vSwitch of ovs_dpdk (below) if one is running.
ovs_stop() {
    [ -n "$OVS_DIR" ] || return 0
    local name pid i
    # Let ovs-vswitchd remove its datapath tap devices (ovs-netdev, br0) before it goes.
    ovs-appctl -t "$OVS_DIR/vswitchd.ctl" exit --cleanup >/dev/null 2>&1 || true
    for name in ovs-vswitchd ovsdb-server; do
        pid=$(cat "$OVS_DIR/$name.pid" 2>/dev/null) || continue
        [ -n "$pid" ] || continue
        kill "$pid" 2>/dev/null || continue
        for ((i = 0; i < 100; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
    done
    rm -rf "$OVS_DIR" "/var/run/dpdk/ovsbench$$"
    OVS_DIR=
}

cleanup() {
    ovs_stop
    rm -rf "$WORK" "/var/run/dpdk/pmdcmp$$"
    huge_release
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

huge_setup "${HUGE_PAGES:-1024}"
# Each DPDK contender's memory: EAL's own on hugepages (every one of them allocates as it needs:
# testpmd and switchyard with --in-memory, OVS adds it itself), a fixed -m without them.
SY_HUGE=()
[ "$HUGE" = 0 ] && SY_HUGE=(--no-huge)

echo "== captures in $WORK"
python3 "$ROOT/benches/gen_pcaps.py" --macs 256 "$WORK/a256.pcap" "$WORK/b256.pcap"
if [ "$BIG_MACS" != 0 ]; then
    python3 "$ROOT/benches/gen_pcaps.py" --macs "$BIG_MACS" "$WORK/abig.pcap" "$WORK/bbig.pcap"
fi
if [ "$have_ovs" = 1 ] && [ "$MID_MACS" != 0 ]; then
    python3 "$ROOT/benches/gen_pcaps.py" --macs "$MID_MACS" "$WORK/amid.pcap" "$WORK/bmid.pcap"
fi

declare -A RATE CPU_RATE
RESULTS=()


CPU_NS= # the CPU time per frame (ns) of the contender measured last, or empty
record() { # label mpps command...
    local label=$1 mpps=$2 cpu=${CPU_NS:-n/a}
    shift 2
    RATE[$label]=$mpps
    if [[ $cpu =~ ^[0-9.]+$ ]] && awk -v c="$cpu" 'BEGIN {exit !(c > 0)}'; then
        CPU_RATE[$label]=$(awk -v c="$cpu" 'BEGIN {printf "%.3f", 1e3 / c}')
        cpu=$(printf '%.2f' "$cpu")
    else
        cpu=n/a
    fi
    CPU_NS=
    RESULTS+=("$(printf '%-34s %9s Mpps %8s ns CPU/frame' "$label" "$mpps" "$cpu")")
    printf '%-34s %9s Mpps %8s ns CPU/frame   %s\n' "$label" "$mpps" "$cpu" "$*"
}

# switchyard pmd ... --json: the rate is rx_pps of the last line.
sy() { # label args...
    local label=$1
    shift
    local cmd=("$BIN" pmd --busy-poll --seconds "$SECS" --json "${SY_HUGE[@]}" "$@")
    local out
    if ! out=$("${cmd[@]}" 2>"$WORK/err"); then
        echo "$label: failed: $(tail -3 "$WORK/err")" >&2
        record "$label" "n/a" "${cmd[@]}"
        return
    fi
    local mpps
    mpps=$(tail -1 <<<"$out" | python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["rx_pps"]/1e6))')
    CPU_NS=$(tail -1 <<<"$out" | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin).get("cpu_ns_per_frame", 0))')
    record "$label" "$mpps" "${cmd[@]}"
    grep -E "avg processing cycles per packet|by stage|drops: " <<<"$out" | sed 's/^/      /' || true
}

# dpdk-testpmd io mode, interactive through a pipe: start, warm up 1 s, show port stats, wait
# SECS, show port stats again; the second show's Rx-pps (testpmd's own rate since the first
# show) summed over both ports.
# net_pcap's infinite_rx holds the whole capture in mbufs, so a big capture needs a big pool
# and time to load. Up to 256k frames a capture the mbufs have testpmd's default size (2176
# bytes, the size of switchyard's buffers, so that the captures held in memory are as large for
# both); beyond, 256-byte mbufs (2 x 1M default mbufs would not fit in memory), which makes
# testpmd's working set about 8x smaller than switchyard's there.
testpmd() { # label a.pcap b.pcap frames-per-capture
    local label=$1 a=$2 b=$3 n=$4
    local mem=(-m 1024) pool=(--total-num-mbufs=32768) settle=1
    if [ "$n" -gt 4096 ]; then
        mem=(-m 3072)
        pool=(--total-num-mbufs=$((2 * n + 65536)))
        [ "$n" -gt 262144 ] && pool+=(--mbuf-size=256)
        settle=8
    fi
    [ "$HUGE" = 1 ] && mem=(--in-memory)
    [ "$HUGE" = 0 ] && mem=(--no-huge "${mem[@]}")
    local cmd=(dpdk-testpmd "${mem[@]}" --no-pci --file-prefix "pmdcmp$$"
        --vdev "net_pcap0,rx_pcap=$a,infinite_rx=1" --vdev "net_pcap1,rx_pcap=$b,infinite_rx=1"
        -l "$MAIN_CORE,$CORE" -- -i --forward-mode=io --nb-cores=1 "${pool[@]}")
    # Commands through a FIFO, so that the forwarding thread's CPU time can be read at the
    # two "show port stats all" (the interval whose frames are counted).
    rm -f "$WORK/testpmd.in"
    mkfifo "$WORK/testpmd.in"
    timeout $((SECS + 60)) "${cmd[@]}" <"$WORK/testpmd.in" >"$WORK/testpmd.out" 2>&1 &
    local pid=$! child tid c0=0 c1=0
    exec 3>"$WORK/testpmd.in"
    sleep "$settle"
    echo start >&3
    sleep 1
    # $! is timeout's; testpmd is its child.
    child=$(pgrep -P "$pid" | head -1) || true
    [ -n "$child" ] && pid=$child
    tid=$(busiest_thread "$pid" 'worker')
    [ -n "$tid" ] && c0=$(thread_ns "$pid" "$tid")
    echo "show port stats all" >&3
    sleep "$SECS"
    [ -n "$tid" ] && c1=$(thread_ns "$pid" "$tid")
    { echo "show port stats all"; echo stop; echo quit; } >&3
    exec 3>&-
    wait || true
    local mpps
    mpps=$(grep -E '^ +Rx-pps:' "$WORK/testpmd.out" | head -4 | tail -2 | awk '{s += $2} END {if (NR == 2 && s > 0) printf "%.3f", s / 1e6; else print "n/a"}')
    [ "$mpps" = n/a ] && tail -5 "$WORK/testpmd.out" >&2
    # Frames of the interval: RX-packets of both ports at the second show less at the first.
    CPU_NS=$(grep -E '^ +RX-packets:' "$WORK/testpmd.out" | head -4 | awk -v c="$((c1 - c0))" \
        '{n[NR] = $2} END {d = n[3] + n[4] - n[1] - n[2]; if (NR >= 4 && d > 0 && c > 0) printf "%.3f", c / d}')
    record "$label" "$mpps" "${cmd[@]}"
}

# Open vSwitch with DPDK, private to this script: its own ovsdb-server on a fresh database and
# its own ovs-vswitchd-dpdk, everything (database, sockets, pidfiles, logs) in $OVS_DIR under
# $WORK, the system's Open vSwitch (if any) untouched. EAL on hugepages (OVS adds --in-memory to
# the EAL arguments), or, in the --no-huge fallback, "--no-huge --legacy-mem -m 2048" (OVS adds
# --in-memory unless it sees --legacy-mem, and --in-memory refuses --no-huge). dpdk-lcore-mask on the main core,
# pmd-cpu-mask on the forwarding core; a netdev bridge with the two net_pcap ports and only the
# default flow (NORMAL: MAC learning), its MAC table sized like switchyard's (4 x the MACs each
# way; OVS's default of 8192 entries cannot hold a big capture's MACs and it floods and
# relearns forever). Everything else at OVS's defaults (EMC on, SMC off, flow-limit 200000, one
# handler and one revalidator thread, unpinned).
# Warm-up: until the datapath holds a flow for each of the 2 x N MAC pairs (learning goes
# through upcalls, slow with many MACs), at most OVS_WARMUP seconds (default 60), then 1 s more.
# The rate: RX packets of both ports (ovs-appctl dpctl/show -s, read live from DPDK) before and
# after SECS; pmd-stats-clear at the start of the interval, so pmd-stats-show's cycles per
# packet are those of the interval.
# OVS sizes its shared mempool itself (262144 mbufs at MTU 1500) and net_pcap's infinite_rx needs
# one mbuf per frame of the capture, both ports from that pool: a 1M-frame capture cannot be
# loaded ("Not enough mbufs to accommodate packets in pcap file"), hence the MID_MACS variant.
ovs_rx() { # RX packets of p0 and p1, summed
    ovs-appctl -t "$OVS_DIR/vswitchd.ctl" dpctl/show -s |
        awk '/^ +port [0-9]+: p[01] / {p = 1; next} p && /RX packets:/ {sub(/.*RX packets:/, ""); s += $1; p = 0} END {print s + 0}'
}

ovs_flows() { # flows in the userspace datapath
    ovs-appctl -t "$OVS_DIR/vswitchd.ctl" dpctl/show | awk '/^ +flows:/ {f = $2} END {print f + 0}'
}

ovs_dpdk() { # label a.pcap b.pcap frames-per-capture
    local label=$1 a=$2 b=$3 n=$4
    OVS_DIR=$WORK/ovs
    mkdir -p "$OVS_DIR"
    local env=(env OVS_RUNDIR="$OVS_DIR" OVS_LOGDIR="$OVS_DIR" OVS_DBDIR="$OVS_DIR")
    local vsctl=("${env[@]}" ovs-vsctl --db="unix:$OVS_DIR/db.sock")
    local appctl=("${env[@]}" ovs-appctl -t "$OVS_DIR/vswitchd.ctl")
    local lmask pmask
    lmask=$(printf '0x%x' $((1 << MAIN_CORE)))
    pmask=$(printf '0x%x' $((1 << CORE)))
    local eal="--no-pci --file-prefix ovsbench$$"
    [ "$HUGE" = 0 ] && eal="--no-huge --legacy-mem -m 2048 $eal"
    local config=(set Open_vSwitch . other_config:dpdk-init=true
        "other_config:dpdk-extra=$eal"
        "other_config:dpdk-lcore-mask=$lmask" "other_config:pmd-cpu-mask=$pmask")
    local mac_table=$((4 * n > 8192 ? 4 * n : 8192))
    local bridge=(add-br br0 -- set bridge br0 datapath_type=netdev "other_config:mac-table-size=$mac_table"
        -- add-port br0 p0 -- set interface p0 type=dpdk "options:dpdk-devargs=net_pcap0,rx_pcap=$a,infinite_rx=1"
        -- add-port br0 p1 -- set interface p1 type=dpdk "options:dpdk-devargs=net_pcap1,rx_pcap=$b,infinite_rx=1")
    # In a network namespace of its own, so that the userspace datapath's tap devices never
    # collide with another instance's or stay behind in the host's namespace.
    local cmd=(unshare --net "$OVS_VSWITCHD" "unix:$OVS_DIR/db.sock" --pidfile="$OVS_DIR/ovs-vswitchd.pid"
        --log-file="$OVS_DIR/ovs-vswitchd.log" --unixctl="$OVS_DIR/vswitchd.ctl" --detach)
    local fail=
    ovs_up config cmd bridge p0 p1 || fail=$OVS_FAIL
    local mpps=n/a stats= warm=
    if [ -z "$fail" ]; then
        local r0 r1 t0 t1 w0 flows=0
        w0=$(date +%s.%N)
        while :; do
            flows=$(ovs_flows || echo 0)
            [ "$flows" -ge $((2 * n)) ] && break
            if awk -v w0="$w0" -v lim="${OVS_WARMUP:-60}" -v now="$(date +%s.%N)" 'BEGIN {exit !(now - w0 > lim)}'; then
                break
            fi
            sleep 0.5
        done
        warm=$(awk -v w0="$w0" -v now="$(date +%s.%N)" -v f="$flows" -v want=$((2 * n)) \
            'BEGIN {printf "warm-up %.1f s to %d of %d datapath flows%s", now - w0, f, want, (f < want ? " (gave up waiting)" : "")}')
        sleep 1
        "${appctl[@]}" dpif-netdev/pmd-stats-clear >/dev/null || true
        local vpid ptid c0=0 c1=0
        vpid=$(cat "$OVS_DIR/ovs-vswitchd.pid" 2>/dev/null) || true
        ptid=$([ -n "$vpid" ] && busiest_thread "$vpid" '^pmd') || true
        t0=$(date +%s.%N)
        [ -n "$ptid" ] && c0=$(thread_ns "$vpid" "$ptid")
        r0=$(ovs_rx || echo 0)
        sleep "$SECS"
        t1=$(date +%s.%N)
        [ -n "$ptid" ] && c1=$(thread_ns "$vpid" "$ptid")
        r1=$(ovs_rx || echo 0)
        CPU_NS=$(awk -v r0="$r0" -v r1="$r1" -v c="$((c1 - c0))" 'BEGIN {if (r1 > r0 && c > 0) printf "%.3f", c / (r1 - r0)}')
        stats=$("${appctl[@]}" dpif-netdev/pmd-stats-show) || true
        mpps=$(awk -v r0="$r0" -v r1="$r1" -v t0="$t0" -v t1="$t1" \
            'BEGIN {if (r1 > r0) printf "%.3f", (r1 - r0) / (t1 - t0) / 1e6; else print "n/a"}')
        [ "$mpps" = n/a ] && fail="no packets received"
    fi
    [ -n "$fail" ] && echo "$label: failed: $fail" >&2
    record "$label" "$mpps" "${cmd[@]}"
    echo "      ovs-vsctl --db=unix:$OVS_DIR/db.sock ${config[*]}"
    echo "      ovs-vsctl --db=unix:$OVS_DIR/db.sock ${bridge[*]}"
    [ -n "$warm" ] && echo "      $warm"
    if [ -n "$stats" ]; then
        # the PMD thread's block (the first), less the zero counters of features not in use
        awk '/^main thread/ {exit} NR > 1' <<<"$stats" |
            grep -E 'packets received|emc hits|megaflow hits|miss with|avg (processing )?cycles per packet' | sed 's/^ */      /' || true
        "${appctl[@]}" dpctl/show | grep -E '^ +flows:' | sed 's/^ */      datapath /' || true
    fi
    ovs_stop
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
if [ "$have_ovs" = 1 ]; then
    ovs_dpdk "ovs-dpdk NORMAL 256" "$WORK/a256.pcap" "$WORK/b256.pcap" 256
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
if [ "$have_ovs" = 1 ] && [ "$MID_MACS" != 0 ]; then
    # OVS-DPDK cannot load a BIG_MACS capture (see ovs_dpdk): the same comparison at MID_MACS.
    ovs_dpdk "ovs-dpdk NORMAL $MID_MACS" "$WORK/amid.pcap" "$WORK/bmid.pcap" "$MID_MACS"
    if [ "$have_testpmd" = 1 ]; then
        testpmd "testpmd io $MID_MACS" "$WORK/amid.pcap" "$WORK/bmid.pcap" "$MID_MACS"
    fi
    # shellcheck disable=SC2046
    sy "sy switch $MID_MACS" --fwd switch --lcores "$CORE" --mac-table-size $((MID_MACS * 4)) \
        $(pc "$WORK/amid.pcap") $(pc "$WORK/bmid.pcap")
    if [ "$have_dpdk" = 1 ]; then
        # net_pcap's infinite_rx holds both captures in mbufs of the shared pool: size it.
        sy "sy switch dpdk:net_pcap $MID_MACS" --fwd switch --lcores "$CORE" --mac-table-size $((MID_MACS * 4)) \
            --mbufs $((2 * MID_MACS + 65536)) \
            --port "dpdk:net_pcap0,rx_pcap=$WORK/amid.pcap,infinite_rx=1" \
            --port "dpdk:net_pcap1,rx_pcap=$WORK/bmid.pcap,infinite_rx=1"
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

ratio() { # label num den [wall]: the ratio of the wall-clock rates, and of the rates per
    # CPU-second (unless "wall": the scaling of several workers is a wall-clock matter)
    local n=${RATE[$2]:-} d=${RATE[$3]:-} cn=${CPU_RATE[$2]:-} cd=${CPU_RATE[$3]:-} by_cpu=
    if [ "${4:-}" != wall ] && [[ $cn =~ ^[0-9.]+$ && $cd =~ ^[0-9.]+$ ]]; then
        by_cpu=$(awk -v n="$cn" -v d="$cd" 'BEGIN {printf "%7.3f by CPU time", (d > 0 ? n / d : 0)}')
    fi
    if [[ $n =~ ^[0-9.]+$ && $d =~ ^[0-9.]+$ ]]; then
        printf '  %-52s %7.3f wall %s   (%s / %s)\n' "$1" "$(awk -v n="$n" -v d="$d" 'BEGIN {print (d > 0 ? n / d : 0)}')" "$by_cpu" "$2" "$3"
    fi
}

echo
echo "== results ($SECS s each, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(uptime | sed 's/.*load/load/'))"
echo "   $HUGE_NOTE"
printf '%s\n' "${RESULTS[@]}"
echo "== ratios"
ratio "switch / io (256 MACs)" "sy switch 256" "sy io 256"
ratio "switch / testpmd io (256 MACs; issue 3 goal >= 0.75)" "sy switch 256" "testpmd io 256"
ratio "switch / OVS-DPDK (256 MACs)" "sy switch 256" "ovs-dpdk NORMAL 256"
ratio "switch on dpdk ports / OVS-DPDK (256; goal >= 3.5)" "sy switch dpdk:net_pcap 256" "ovs-dpdk NORMAL 256"
ratio "OVS-DPDK / testpmd io (256 MACs)" "ovs-dpdk NORMAL 256" "testpmd io 256"
ratio "io / testpmd io (256 MACs)" "sy io 256" "testpmd io 256"
ratio "switch on dpdk ports / testpmd io (256; goal >= 0.75)" "sy switch dpdk:net_pcap 256" "testpmd io 256"
ratio "io on dpdk ports / testpmd io (256 MACs)" "sy io dpdk:net_pcap 256" "testpmd io 256"
ratio "switch $BIG_MACS MACs / 256 MACs" "sy switch $BIG_MACS" "sy switch 256"
ratio "switch / io ($BIG_MACS MACs)" "sy switch $BIG_MACS" "sy io $BIG_MACS"
ratio "switch / testpmd io ($BIG_MACS MACs; goal >= 0.6)" "sy switch $BIG_MACS" "testpmd io $BIG_MACS"
ratio "switch / testpmd io ($MID_MACS MACs, pcap ports)" "sy switch $MID_MACS" "testpmd io $MID_MACS"
ratio "switch on dpdk ports / testpmd io ($MID_MACS; goal >= 0.6)" "sy switch dpdk:net_pcap $MID_MACS" "testpmd io $MID_MACS"
ratio "switch / OVS-DPDK ($MID_MACS MACs)" "sy switch $MID_MACS" "ovs-dpdk NORMAL $MID_MACS"
ratio "OVS-DPDK / testpmd io ($MID_MACS MACs)" "ovs-dpdk NORMAL $MID_MACS" "testpmd io $MID_MACS"
ratio "switch: 2 workers / 1 worker" "sy switch 256 x2 workers" "sy switch 256" wall
ratio "io: 2 workers / 1 worker" "sy io 256 x2 workers" "sy io 256" wall

# What a switch adds to a frame over testpmd io on the same net_pcap ports (whose own receive
# copy, mbuf allocation and free are most of testpmd io's cost): CPU ns per frame less testpmd
# io's, from the same run.
own() { # label contender reference
    local c=${CPU_RATE[$2]:-} r=${CPU_RATE[$3]:-}
    if [[ $c =~ ^[0-9.]+$ && $r =~ ^[0-9.]+$ ]]; then
        awk -v l="$1" -v c="$c" -v r="$r" 'BEGIN {printf "  %-52s %7.2f ns CPU/frame over testpmd io\n", l, 1e3 / c - 1e3 / r}'
    fi
}
echo "== the switches' own cost (net_pcap ports)"
own "switchyard switch on dpdk ports (256 MACs)" "sy switch dpdk:net_pcap 256" "testpmd io 256"
own "switchyard io on dpdk ports (256 MACs)" "sy io dpdk:net_pcap 256" "testpmd io 256"
own "OVS-DPDK NORMAL (256 MACs)" "ovs-dpdk NORMAL 256" "testpmd io 256"
own "switchyard switch on dpdk ports ($MID_MACS MACs)" "sy switch dpdk:net_pcap $MID_MACS" "testpmd io $MID_MACS"
own "OVS-DPDK NORMAL ($MID_MACS MACs)" "ovs-dpdk NORMAL $MID_MACS" "testpmd io $MID_MACS"
own_ratio() { # label num den reference: (num - reference) / (den - reference), CPU ns per frame
    local n=${CPU_RATE[$2]:-} d=${CPU_RATE[$3]:-} r=${CPU_RATE[$4]:-}
    if [[ $n =~ ^[0-9.]+$ && $d =~ ^[0-9.]+$ && $r =~ ^[0-9.]+$ ]]; then
        awk -v l="$1" -v n="$n" -v d="$d" -v r="$r" \
            'BEGIN {a = 1e3 / n - 1e3 / r; b = 1e3 / d - 1e3 / r; if (a > 0 && b > 0) printf "  %-52s %7.3f\n", l, a / b}'
    fi
}
own_ratio "OVS-DPDK's own cost / switchyard switch's (256)" "ovs-dpdk NORMAL 256" "sy switch dpdk:net_pcap 256" "testpmd io 256"
own_ratio "OVS-DPDK's own cost / switchyard switch's ($MID_MACS)" "ovs-dpdk NORMAL $MID_MACS" "sy switch dpdk:net_pcap $MID_MACS" "testpmd io $MID_MACS"
