#!/usr/bin/env bash
# VM-to-VM through the switch over vhost-user, 64-byte frames (60 bytes without the FCS, as in
# pmd-compare.sh): switchyard's native vhost-user ports against Open vSwitch with DPDK
# (dpdkvhostuserclient ports, NORMAL action) and against DPDK's own vhost library (the net_vhost
# vdev) through switchyard's dpdk: ports, one contender at a time, the same "VMs" for each.
# It prints the Mpps the VMs received and the ratios; it asserts nothing.
#
# usage: benches/vm2vm.sh [SECONDS]      (default 5 s of measurement per contender)
# env:   SWITCHYARD=P    the switchyard binary (default target/release/switchyard; the net_vhost
#                        contender needs a build with --features dpdk)
#        VM_CORE=C       the core of the VMs (testpmd), default 0
#        SW_CORE=C       the core of the switch, default 1 (its whole process is confined there)
#        FRAME=N         frame length without FCS (default 60: 64 bytes on the wire)
#        INFLIGHT=N      bursts of 32 frames each VM injects into the loop (default 4; see below)
#        ROUNDS=N        rounds, each running every contender once, interleaved (default 3); the
#                        median is reported (this machine's rates vary run to run)
#        QSIZE=N         virtio ring size of the VM ports (virtio-user queue_size=, default 256)
#        OVS=0 / NET_VHOST=0 / IO=0   skip OVS-DPDK / switchyard over net_vhost / the io reference
#        SY_ARGS="..."   extra arguments for every switchyard pmd (e.g. "--stats-period 1", whose
#                        lines, with each worker's busy share, are in the kept sy.out)
#        DEFAULT=0       skip "switchyard vhost switch, default": the same switch without
#                        --busy-poll (its idle back-off, as `switchyard run` has it unless told
#                        --busy-poll), run next to the --busy-poll one in every round (the two
#                        swap places every other round)
#        TP_VHOST=0      skip "testpmd net_vhost io": DPDK's vhost library alone as the switch
#                        (a second dpdk-testpmd, io forwarding between two net_vhost ports,
#                        --record-core-cycles), for its busy cycles a frame
#        SY_BASE=P       another switchyard binary (e.g. a build before a change) run as one more
#                        contender in every round, "switchyard vhost switch (base)", same flags
#        QUEUES=N        queue pairs of every VM port and every vhost port (default 1; testpmd
#                        --rxq/--txq N, still one forwarding core)
#        WORKERS2=1      one more contender: "switchyard vhost switch, 2 workers" (--lcores
#                        VM_CORE,SW_CORE: its second worker shares the VMs' core), for
#                        benches/scaling.sh; each switchyard line then also gives its capacity,
#                        the sum over its workers of frames / busy seconds
#        VM_DEVARGS=...  more devargs for both virtio-user ports (e.g. "in_order=0" to turn
#                        VIRTIO_F_IN_ORDER off, which virtio-user offers by default)
#        HUGEPAGES=0     every DPDK process with --no-huge (default: all on 2 MiB hugepages when
#                        the machine can, see benches/hugepages.sh: as root the script mounts a
#                        hugetlbfs and reserves HUGE_PAGES pages, default 1024, given back at
#                        the end; otherwise --no-huge for all, printed as a fallback)
#        (every round also prints the cores' cache-line hand-over latency, benches/core-latency.c,
#        built with cc when there is one: this VM's rates follow it)
#        KEEP=1          keep the work directory (logs of every process) for a look afterwards
#        OVS_VSWITCHD=P  the DPDK build of ovs-vswitchd (default Debian's
#                        /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk)
#
# The VMs: one dpdk-testpmd (Debian's dpdk 22.11) with two virtio-user ports, net_virtio_user0 and
# net_virtio_user1, each the frontend of one vhost-user socket, all of testpmd on VM_CORE (its
# main lcore, which only reads commands, and its one forwarding lcore). EAL runs on hugepages
# (--in-memory --single-file-segments -m 256: hugetlbfs memfds, one per memory segment list,
# which virtio-user passes to the backend, within vhost-user's 8 regions), or with --no-huge
# (then DPDK backs its memory with a plain memfd) in the fallback. testpmd is the vhost-user server (server=1) for every contender, so its
# command line is the same each time; the switches connect as clients (switchyard
# `vhost:PATH,client`, net_vhost `client=1`, OVS `dpdkvhostuserclient`).
#
# The method: a closed loop with testpmd in io mode. txonly-into-one-port and rxonly-on-the-other
# cannot be had from one testpmd on one core (the forwarding mode is per testpmd, not per port;
# txonly never polls RX, so the receiving ring fills after 256 frames and nothing more is
# delivered), and flowgen, which sends and receives, writes the same fixed MACs on both ports
# (00:01:02:03:04:00 -> :01), which would make every switch see its one source MAC flap between
# the ports. Instead each VM port has its own MAC (mac= devarg: 02:00:00:00:00:01 and :02) and
# testpmd's peer of each port is the other port's MAC (--eth-peer), and testpmd runs
# `start tx_first INFLIGHT`: each port first sends INFLIGHT bursts of 32 txonly frames (src = its
# own MAC, dst = the other port's), then testpmd forwards in io mode (port 0 <-> port 1, frames
# unchanged). A frame sent by port 0 (src :01, dst :02) crosses the switch to port 1, testpmd
# sends it out of port 0 again, unchanged, and so on; port 1's frames go round the other way.
# Every MAC is only ever seen on its own port, so each switch learns both and forwards unicast.
# 2 x INFLIGHT x 32 frames circulate for ever; nothing is generated or dropped after the start
# (each loop holds 128 frames at the default, half a 256-slot ring, so no ring can overflow), and
# the rate is the forwarding rate of the slower stage: the switch, as long as testpmd's io
# forwarding (no frame data touched) outruns it and enough frames are in flight to keep the
# switch busy (INFLIGHT=2 / 8 with QSIZE=1024 to check). A loop that lost its frames at the start
# (injected before the switch polled the ring) would stay empty: a port that received nothing in
# the interval makes the round n/a. The measure is what the VMs received: testpmd's Rx-pps of
# both ports summed (its own TSC-timed rate between two `show port stats all`, after 2 s of
# warm-up), i.e. both directions together, each frame delivered to a receiving VM counted once.
# The switch's own counters follow each rate: for switchyard and testpmd-as-switch over their
# whole run (setup included: it moves no frames, so it adds no busy cycles), for OVS over the
# measured interval. The cost of each switch is its busy cycles a frame: TSC cycles spent in
# the polls that moved frames / frames received (switchyard's "avg processing cycles per
# packet", OVS's `pmd-stats-show` "avg processing cycles per packet", testpmd's
# `--record-core-cycles` "CPU cycles/packet", which in DPDK 22.11 counts only bursts that
# received something); it is what a switch would spend alone on its core, independent of how
# fast the "VMs" are, and is reported as a median with its ratios. The io reference
# (switchyard --fwd io between the two vhost ports) shows the ceiling of the switchyard vhost
# path and testpmd together.
set -euo pipefail

SECS=${1:-5}
# shellcheck source=benches/hugepages.sh
. "$(dirname "$0")/hugepages.sh"
# shellcheck source=benches/ovs.sh
. "$(dirname "$0")/ovs.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SWITCHYARD:-$ROOT/target/release/switchyard}
VM_CORE=${VM_CORE:-0}
SW_CORE=${SW_CORE:-1}
FRAME=${FRAME:-60}
INFLIGHT=${INFLIGHT:-4}
QSIZE=${QSIZE:-256}
QUEUES=${QUEUES:-1}
ROUNDS=${ROUNDS:-3}
OVS_VSWITCHD=${OVS_VSWITCHD:-/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk}
OVS_SCHEMA=${OVS_SCHEMA:-/usr/share/openvswitch/vswitch.ovsschema}
MAC0=02:00:00:00:00:01
MAC1=02:00:00:00:00:02
# Every wait below is bounded; this bounds the whole script as well.
MAX_RUNTIME=${MAX_RUNTIME:-$((ROUNDS * 4 * (SECS + 60) + 120))}

[ -x "$BIN" ] || { echo "switchyard binary $BIN not found (set SWITCHYARD=)" >&2; exit 1; }
command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd not found (Debian: apt install dpdk)" >&2; exit 1; }
have_ovs=0
if [ "${OVS:-1}" != 0 ] && [ -x "$OVS_VSWITCHD" ] && [ -r "$OVS_SCHEMA" ] &&
    command -v ovsdb-tool >/dev/null && command -v ovsdb-server >/dev/null &&
    command -v ovs-vsctl >/dev/null && command -v ovs-appctl >/dev/null; then
    have_ovs=1
fi

WORK=$(mktemp -d /tmp/vm2vm.XXXXXX)
TP_PREFIX=vm2vmtp$$
OVS_PREFIX=vm2vmovs$$
PREFIXES=("$TP_PREFIX" "$OVS_PREFIX")
TP_PID= SW_PID= OVS_DIR= WATCHDOG=

ovs_stop() {
    [ -n "$OVS_DIR" ] || return 0
    local name
    # An orderly exit that deletes the datapath and its ports (after a plain SIGTERM the
    # userspace datapath leaves its tap devices, ovs-netdev and the bridge's, behind, persistent;
    # here they live in a private network namespace that goes with the process anyway).
    timeout 10 ovs-appctl -t "$OVS_DIR/vswitchd.ctl" exit --cleanup >/dev/null 2>&1 || true
    for name in ovs-vswitchd ovsdb-server; do
        stop_pid "$(cat "$OVS_DIR/$name.pid" 2>/dev/null || true)"
    done
    OVS_DIR=
}

tp_stop() {
    exec 7>&-
    stop_pid "$TP_PID"
    TP_PID=
}

sw_stop() {
    stop_pid "$SW_PID"
    SW_PID=
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    tp_stop
    sw_stop
    ovs_stop
    huge_release
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    local p
    for p in "${PREFIXES[@]}"; do
        rm -rf "/var/run/dpdk/$p" "/run/user/$(id -u)/dpdk/$p"
    done
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'echo "vm2vm.sh: out of time ($MAX_RUNTIME s)" >&2; exit 124' TERM
( sleep "$MAX_RUNTIME"; kill -TERM $$ 2>/dev/null ) </dev/null >/dev/null 2>&1 &
WATCHDOG=$!

# waits up to $1 seconds for the command to succeed
wait_until() {
    local t=$1 i
    shift
    for ((i = 0; i < t * 10; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# The cache-line hand-over latency between the two cores (benches/core-latency.c), measured
# before every contender: this VM's vCPUs are placed by the hypervisor either close together
# (about 115 TSC cycles one way) or far apart (about 500), which changes every rate here by 2-3x.
LAT_BIN=
if command -v cc >/dev/null && cc -O2 -pthread "$ROOT/benches/core-latency.c" -o "$WORK/core-latency" 2>/dev/null; then
    LAT_BIN=$WORK/core-latency
fi
LAT=n/a
hand_over() {
    LAT=n/a
    [ -z "$LAT_BIN" ] || LAT=$("$LAT_BIN" "$VM_CORE" "$SW_CORE" 200000 2>/dev/null || echo n/a)
}

declare -A RATE RUNS LATS CYC CAPS
LABELS=()
ROUND=1
record() { # label mpps [busy cycles a frame]
    local label=$1 mpps=$2 cyc=${3:-n/a}
    [ -n "${RUNS[$label]+x}" ] || LABELS+=("$label")
    RUNS[$label]="${RUNS[$label]:-} $mpps"
    [[ $cyc =~ ^[0-9.]+$ ]] || cyc=n/a
    CYC[$label]="${CYC[$label]:-} $cyc"
    local before=$LAT
    hand_over
    LAT="$before/$LAT"
    LATS[$label]="${LATS[$label]:-} $LAT"
    printf '%-34s %9s Mpps %8s busy cycles/frame   (round %d; core hand-over %s cycles before/after)\n' \
        "$label" "$mpps" "$cyc" "$ROUND" "$LAT"
}
# The median of a list of values (n/a left out).
median_of() {
    tr ' ' '\n' <<<"$1" | { grep -E '^[0-9.]+$' || true; } | sort -n |
        awk '{v[NR] = $1} END {if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
# The median of a label's rounds.
median() { median_of "${RUNS[$1]}"; }

# The VMs: testpmd, interactive, its commands through a FIFO on fd 7.
tp_start() { # sock0 sock1
    local s0=$1 s1=$2
    local mem=(--no-huge -m 512)
    [ "$HUGE" = 1 ] && mem=(--in-memory --single-file-segments -m 256)
    TP_CMD=(taskset -c "$VM_CORE" dpdk-testpmd --lcores "0@$VM_CORE,1@$VM_CORE" "${mem[@]}" --no-pci
        --file-prefix "$TP_PREFIX" --log-level=pmd.net.virtio.*:warning
        --vdev "net_virtio_user0,path=$s0,server=1,queues=$QUEUES,queue_size=$QSIZE,mac=$MAC0${VM_DEVARGS:+,$VM_DEVARGS}"
        --vdev "net_virtio_user1,path=$s1,server=1,queues=$QUEUES,queue_size=$QSIZE,mac=$MAC1${VM_DEVARGS:+,$VM_DEVARGS}"
        -- -i --nb-cores=1 --rxq="$QUEUES" --txq="$QUEUES" --forward-mode=io --burst=32 --rxd="$QSIZE" --txd="$QSIZE" --txpkts="$FRAME" --total-num-mbufs=16384
        --eth-peer="0,$MAC1" --eth-peer="1,$MAC0")
    rm -f "$WORK/tp.in"
    mkfifo "$WORK/tp.in"
    timeout -s KILL $((SECS + 90)) "${TP_CMD[@]}" <"$WORK/tp.in" >"$WORK/tp.out" 2>&1 &
    TP_PID=$!
    exec 7>"$WORK/tp.in"
}

tp_cmd() { echo "$*" >&7; }

links_up() {
    tp_cmd "show port info all"
    sleep 0.3
    [ "$(grep -E 'Link status:' "$WORK/tp.out" | tail -2 | grep -c ': up')" = 2 ]
}

# Runs the measurement on a started testpmd, stops it, and sets MPPS (the rate, or n/a).
tp_measure() {
    MPPS=n/a
    if ! wait_until 60 grep -q 'testpmd> ' "$WORK/tp.out"; then
        echo "testpmd did not come up (the switch never connected?):" >&2
        tail -5 "$WORK/tp.out" >&2
        tp_stop
        return
    fi
    # Both links up: the switch has set up both vrings of both ports.
    if ! wait_until 20 links_up; then
        echo "links did not come up:" >&2
        grep -E 'Link status' "$WORK/tp.out" | tail -2 >&2
        tp_stop
        return
    fi
    # Links come up when the vrings are set up; give the switch a moment to start polling them
    # (OVS reassigns its PMD's queues then): a frame injected before is lost for good.
    sleep 2
    tp_cmd "start tx_first $INFLIGHT"
    sleep 2
    tp_cmd "show port stats all"
    [ -z "${ON_START:-}" ] || "$ON_START"
    sleep "$SECS"
    tp_cmd "show port stats all"
    [ -z "${ON_END:-}" ] || "$ON_END"
    sleep 0.3
    tp_cmd "stop"
    sleep 0.5
    tp_cmd "quit"
    wait_until 10 eval '! alive "$TP_PID"' || true
    tp_stop
    # Both loops must be alive: one whose frames were lost (dropped at the start) shows 0.
    MPPS=$({ grep -E '^ +Rx-pps:' "$WORK/tp.out" || true; } | tail -2 |
        awk '{s += $2; if ($2 == 0) dead = 1} END {if (NR == 2 && s > 0 && !dead) printf "%.3f", s / 1e6; else print "n/a"}')
    [ "$MPPS" != n/a ] || echo "no rate: a VM port received nothing in the interval (its loop lost its frames)" >&2
}

# testpmd's view: per-port rates of the last interval and the totals of `stop`.
tp_report() {
    { grep -E '^ +Rx-pps:' "$WORK/tp.out" || true; } | tail -2 | awk '{printf "      VM port %d: %.3f Mpps received\n", NR - 1, $2 / 1e6}'
    awk '/Accumulated forward statistics for all ports/ {p = 1} p && /RX-packets|TX-packets/ {sub(/^ */, "      all ports: "); print; }' \
        "$WORK/tp.out" | head -2
}

socks() { # contender tag -> two socket paths
    echo "$WORK/$1-0.sock" "$WORK/$1-1.sock"
}

# switchyard pmd between the two VM ports; $1 label, $2 tag, rest: pmd arguments (SOCK0/SOCK1
# replaced by the socket paths).
sy() {
    local label=$1 tag=$2
    shift 2
    local s0 s1
    read -r s0 s1 < <(socks "$tag")
    local args=() a
    for a in "$@"; do
        a=${a//SOCK0/$s0}
        a=${a//SOCK1/$s1}
        args+=("$a")
    done
    local bin=$BIN poll=(--busy-poll) cores=$SW_CORE
    # the default: the idle back-off
    [ "$tag" = dflt ] && poll=()
    [ "$tag" = base ] && bin=$SY_BASE
    [ "$tag" = w2 ] && cores=$VM_CORE,$SW_CORE
    [ "$HUGE" = 0 ] && poll+=(--no-huge)
    local cmd=(taskset -c "$cores" "$bin" pmd "${poll[@]}" --json --lcores "$cores" ${SY_ARGS:-} "${args[@]}")
    hand_over
    echo "== $label"
    echo "   switch: ${cmd[*]}"
    "${cmd[@]}" >"$WORK/sy.out" 2>"$WORK/sy.err" </dev/null &
    SW_PID=$!
    # its EAL's runtime directory, if it brings one up (dpdk: ports)
    PREFIXES+=("switchyard-$SW_PID")
    sleep 1
    if ! alive "$SW_PID"; then
        echo "$label: switchyard exited: $(tail -3 "$WORK/sy.err")" >&2
        record "$label" n/a
        SW_PID=
        return
    fi
    tp_start "$s0" "$s1"
    echo "   VMs:    ${TP_CMD[*]}"
    local mpps
    tp_measure
    mpps=$MPPS
    sw_stop
    # busy cycles a frame over all workers, and the capacity: the sum of each worker's
    # frames / busy seconds (the rate it would reach if the switch were the bottleneck)
    local cyc cap
    read -r cyc cap < <(awk '
        /Summary:/ { s = 1 }
        s && /^ *avg processing cycles per packet:/ { split($NF, f, /[()\/]/); b[++n] = f[2]; r[n] = f[3] }
        /\(TSC at [0-9.]+ GHz\)/ { ghz = $3 }
        END {
            for (i = 1; i <= n; i++) { B += b[i]; R += r[i]; if (b[i] > 0 && ghz > 0) c += r[i] / (b[i] / (ghz * 1e9)) }
            if (R > 0) printf "%.2f %.3f\n", B / R, c / 1e6; else print "n/a n/a"
        }' "$WORK/sy.out")
    CAPS[$label]="${CAPS[$label]:-} $cap"
    record "$label" "$mpps" "$cyc"
    tp_report
    # (over its whole run, setup included: its idle share says whether it was the bottleneck)
    grep -E 'total: |idle cycles|avg processing cycles per packet' "$WORK/sy.out" | sed 's/^ */      switch /' || true
    if [ "$mpps" = n/a ]; then
        tail -5 "$WORK/sy.err" "$WORK/tp.out" >&2 || true
    fi
    rm -f "$s0" "$s1"
}

# Open vSwitch with DPDK, private: its own ovsdb-server on a fresh database and its own
# ovs-vswitchd-dpdk, everything in $WORK/ovs, EAL with its own --file-prefix, the system's Open
# vSwitch (if any) untouched; ovs-vswitchd in a network namespace of its own (unshare --net),
# since the userspace datapath creates kernel tap devices (ovs-netdev and one per bridge) whose
# names would collide with any other OVS on the machine. EAL on hugepages, or without them in
# the fallback, as in pmd-compare.sh.
# The whole process on SW_CORE (taskset; dpdk-lcore-mask and pmd-cpu-mask both SW_CORE), like
# switchyard's. A netdev bridge with two dpdkvhostuserclient ports and only the default flow
# (NORMAL: MAC learning); everything else at OVS's defaults.
ovs_dpdk() {
    local label=$1 tag=ovs
    local s0 s1
    read -r s0 s1 < <(socks "$tag")
    OVS_DIR=$WORK/ovs
    rm -rf "$OVS_DIR"
    mkdir -p "$OVS_DIR"
    local env=(env OVS_RUNDIR="$OVS_DIR" OVS_LOGDIR="$OVS_DIR" OVS_DBDIR="$OVS_DIR")
    local vsctl=("${env[@]}" ovs-vsctl --db="unix:$OVS_DIR/db.sock")
    local appctl=("${env[@]}" ovs-appctl -t "$OVS_DIR/vswitchd.ctl")
    local mask
    mask=$(printf '0x%x' $((1 << SW_CORE)))
    local eal="--no-pci --file-prefix $OVS_PREFIX"
    [ "$HUGE" = 0 ] && eal="--no-huge --legacy-mem -m 2048 $eal"
    local config=(set Open_vSwitch . other_config:dpdk-init=true
        "other_config:dpdk-extra=$eal"
        "other_config:dpdk-lcore-mask=$mask" "other_config:pmd-cpu-mask=$mask")
    local bridge=(add-br vm2vm -- set bridge vm2vm datapath_type=netdev
        -- add-port vm2vm vm0 -- set interface vm0 type=dpdkvhostuserclient "options:vhost-server-path=$s0"
        -- add-port vm2vm vm1 -- set interface vm1 type=dpdkvhostuserclient "options:vhost-server-path=$s1")
    local cmd=(unshare --net taskset -c "$SW_CORE" "$OVS_VSWITCHD" "unix:$OVS_DIR/db.sock" --pidfile="$OVS_DIR/ovs-vswitchd.pid"
        --log-file="$OVS_DIR/ovs-vswitchd.log" --unixctl="$OVS_DIR/vswitchd.ctl" --detach)
    hand_over
    echo "== $label"
    echo "   switch: ${cmd[*]}"
    echo "           ovs-vsctl ${config[*]}"
    echo "           ovs-vsctl ${bridge[*]}"
    local fail=
    ovs_up config cmd bridge vm0 vm1 || fail=$OVS_FAIL
    if [ -n "$fail" ]; then
        echo "$label: failed: $fail" >&2
        record "$label" n/a
        ovs_stop
        return
    fi
    tp_start "$s0" "$s1"
    echo "   VMs:    ${TP_CMD[*]}"
    local mpps
    # the PMD's counters of the measured interval only (and taken while the VMs are still up:
    # OVS reloads its PMD when they go)
    ovs_clear() { "${appctl[@]}" dpif-netdev/pmd-stats-clear >/dev/null 2>&1 || true; }
    ovs_show() { "${appctl[@]}" dpif-netdev/pmd-stats-show -pmd "$SW_CORE" >"$OVS_DIR/pmd-stats" 2>&1 || true; }
    ON_START=ovs_clear ON_END=ovs_show tp_measure
    mpps=$MPPS
    tp_report
    if [ -s "$OVS_DIR/pmd-stats" ]; then
        grep -E 'packets received|emc hits|megaflow hits|miss with|idle cycles|avg (processing )?cycles per packet' \
            "$OVS_DIR/pmd-stats" | sed 's/^ */      ovs /' || true
    fi
    if [ "$mpps" = n/a ]; then
        grep -E 'ERR|WARN' "$OVS_DIR/ovs-vswitchd.log" | tail -5 >&2 || true
    fi
    local cyc
    cyc=$(sed -n 's/^ *avg processing cycles per packet: \([0-9.]*\) .*/\1/p' "$OVS_DIR/pmd-stats" 2>/dev/null | tail -1)
    ovs_stop
    # (recorded once OVS's PMD has stopped spinning on the switch's core: the hand-over
    # latency is measured again there)
    record "$label" "$mpps" "$cyc"
    rm -f "$s0" "$s1"
}

# DPDK's vhost library alone as the switch: a second dpdk-testpmd on SW_CORE (main and
# forwarding lcore both there, as for the other switches) with two net_vhost ports (clients of
# the VMs' sockets, as the other switches are) in io mode: port 0's frames out of port 1 and
# back, which is where this loop's MACs live, so it does a switch's port I/O without its
# lookups. `--record-core-cycles` gives its busy cycles a frame ("CPU cycles/packet" of
# `show fwd stats all`, over its whole run).
TPV_PREFIX=vm2vmtpv$$
PREFIXES+=("$TPV_PREFIX")
tpv_cmd() { echo "$*" >&8; }
tpv_show() { tpv_cmd "show fwd stats all"; }
tpv() {
    local label=$1 tag=tpv
    local s0 s1
    read -r s0 s1 < <(socks "$tag")
    local mem=(--no-huge -m 1024)
    [ "$HUGE" = 1 ] && mem=(--in-memory --single-file-segments -m 512)
    local cmd=(taskset -c "$SW_CORE" dpdk-testpmd --lcores "0@$SW_CORE,1@$SW_CORE" "${mem[@]}" --no-pci
        --file-prefix "$TPV_PREFIX" --log-level=pmd.net.vhost.*:warning --log-level=lib.vhost.*:warning
        --vdev "net_vhost0,iface=$s0,client=1,queues=1" --vdev "net_vhost1,iface=$s1,client=1,queues=1"
        -- -i --auto-start --nb-cores=1 --forward-mode=io --burst=32 --record-core-cycles
        --rxd=1024 --txd=1024 --total-num-mbufs=16384)
    hand_over
    echo "== $label"
    echo "   switch: ${cmd[*]}"
    rm -f "$WORK/tpv.in"
    mkfifo "$WORK/tpv.in"
    timeout -s KILL $((SECS + 120)) "${cmd[@]}" <"$WORK/tpv.in" >"$WORK/tpv.out" 2>&1 &
    SW_PID=$!
    exec 8>"$WORK/tpv.in"
    if ! wait_until 60 grep -q 'testpmd> ' "$WORK/tpv.out"; then
        echo "$label: testpmd did not come up: $(tail -3 "$WORK/tpv.out")" >&2
        exec 8>&-
        sw_stop
        record "$label" n/a
        return
    fi
    tp_start "$s0" "$s1"
    echo "   VMs:    ${TP_CMD[*]}"
    local mpps cyc
    ON_END=tpv_show tp_measure
    mpps=$MPPS
    sleep 0.3
    tpv_cmd "quit"
    exec 8>&-
    wait_until 10 eval '! alive "$SW_PID"' || true
    sw_stop
    cyc=$(sed -n 's/.*CPU cycles\/packet=\([0-9.]*\) .*/\1/p' "$WORK/tpv.out" | head -1)
    record "$label" "$mpps" "$cyc"
    tp_report
    grep -E 'CPU cycles/packet' "$WORK/tpv.out" | head -1 | sed 's/^ */      switch /' || true
    rm -f "$s0" "$s1"
}

huge_setup "${HUGE_PAGES:-1024}"
echo "== VM-to-VM over vhost-user: VMs (testpmd) on core $VM_CORE, the switch on core $SW_CORE, $FRAME-byte frames, $SECS s each"
echo "   load average: $(cut -d' ' -f1-3 /proc/loadavg)"

QOPT=
[ "$QUEUES" = 1 ] || QOPT=",queues=$QUEUES"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    [ "$ROUNDS" = 1 ] || echo "==== round $ROUND of $ROUNDS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    # the two poll modes swap places every other round
    if [ "${DEFAULT:-1}" != 0 ] && ((ROUND % 2 == 0)); then
        sy "switchyard vhost switch, default" dflt --fwd switch --port "vhost:SOCK0,client$QOPT" --port "vhost:SOCK1,client$QOPT"
    fi
    sy "switchyard vhost switch" sy --fwd switch --port "vhost:SOCK0,client$QOPT" --port "vhost:SOCK1,client$QOPT"
    if [ "${DEFAULT:-1}" != 0 ] && ((ROUND % 2 == 1)); then
        sy "switchyard vhost switch, default" dflt --fwd switch --port "vhost:SOCK0,client$QOPT" --port "vhost:SOCK1,client$QOPT"
    fi
    if [ "${WORKERS2:-0}" = 1 ]; then
        sy "switchyard vhost switch, 2 workers" w2 --fwd switch --port "vhost:SOCK0,client$QOPT" --port "vhost:SOCK1,client$QOPT"
    fi
    if [ -n "${SY_BASE:-}" ]; then
        sy "switchyard vhost switch (base)" base --fwd switch --port "vhost:SOCK0,client$QOPT" --port "vhost:SOCK1,client$QOPT"
    fi
    if [ "$have_ovs" = 1 ]; then
        ovs_dpdk "ovs-dpdk NORMAL"
    fi
    if [ "${TP_VHOST:-1}" != 0 ]; then
        tpv "testpmd net_vhost io"
    fi
    if [ "${NET_VHOST:-1}" != 0 ]; then
        sy "switchyard net_vhost switch" nv --fwd switch \
            --port "dpdk:net_vhost0,iface=SOCK0,client=1,queues=1" \
            --port "dpdk:net_vhost1,iface=SOCK1,client=1,queues=1"
    fi
    if [ "${IO:-1}" != 0 ]; then
        sy "switchyard vhost io (ref)" io --fwd io --port "vhost:SOCK0,client$QOPT" --port "vhost:SOCK1,client$QOPT"
    fi
done

# ratio LABEL NUM DEN: of the Mpps medians; cratio: of the busy cycles a frame medians.
ratio() { ratio_of RATE RUNS "$@"; }
cratio() { ratio_of CYCM CYC "$@"; }
ratio_of() { # medians-array rounds-array label num den
    local -n med=$1 rounds=$2
    shift 2
    local n=${med[$2]:-} d=${med[$3]:-}
    # the same ratio within each round (both contenders ran under the same vCPU placement)
    local per
    per=$(awk -v n="${rounds[$2]:-}" -v d="${rounds[$3]:-}" 'BEGIN {
        k = split(n, a, " "); split(d, b, " ");
        for (i = 1; i <= k; i++) printf " %s", (a[i] ~ /^[0-9.]+$/ && b[i] ~ /^[0-9.]+$/ && b[i] > 0) ? sprintf("%.2f", a[i] / b[i]) : "n/a" }')
    if [[ $n =~ ^[0-9.]+$ && $d =~ ^[0-9.]+$ ]]; then
        printf '  %-48s %7.3f   (%s / %s; per round:%s)\n' "$1" "$(awk -v n="$n" -v d="$d" 'BEGIN {print (d > 0 ? n / d : 0)}')" "$2" "$3" "$per"
    else
        printf '  %-48s     n/a   (%s / %s)\n' "$1" "$2" "$3"
    fi
}

echo
echo "== results: Mpps received by the VMs, both directions; median of $ROUNDS round(s) of $SECS s ($FRAME-byte frames, $INFLIGHT x 32 frames in flight each way, rings of $QSIZE, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
declare -A CYCM CAPM
for l in "${LABELS[@]}"; do
    RATE[$l]=$(median "$l")
    printf '%-34s %9s Mpps   (rounds:%s; hand-over cycles:%s)\n' "$l" "${RATE[$l]}" "${RUNS[$l]}" "${LATS[$l]}"
done
echo "== busy cycles a frame (TSC cycles in the polls that moved frames / frames received), median of the rounds"
for l in "${LABELS[@]}"; do
    CYCM[$l]=$(median_of "${CYC[$l]}")
    printf '%-34s %9s cycles (rounds:%s)\n' "$l" "${CYCM[$l]}" "${CYC[$l]}"
done
if [ "${WORKERS2:-0}" = 1 ]; then
    echo "== capacity: the sum over a switch's workers of frames / busy seconds (Mpps), median of the rounds"
    for l in "${LABELS[@]}"; do
        [ -n "${CAPS[$l]+x}" ] || continue
        CAPM[$l]=$(median_of "${CAPS[$l]}")
        printf '%-34s %9s Mpps (rounds:%s)\n' "$l" "${CAPM[$l]}" "${CAPS[$l]}"
    done
fi
echo "   load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== ratios"
ratio "default / --busy-poll (goal: within noise)" "switchyard vhost switch, default" "switchyard vhost switch"
ratio "default / OVS-DPDK" "switchyard vhost switch, default" "ovs-dpdk NORMAL"
ratio "switchyard / OVS-DPDK (goal >= 2)" "switchyard vhost switch" "ovs-dpdk NORMAL"
ratio "switchyard / switchyard-over-net_vhost (goal >= 1)" "switchyard vhost switch" "switchyard net_vhost switch"
ratio "switch / io (switchyard vhost)" "switchyard vhost switch" "switchyard vhost io (ref)"
ratio "switchyard / switchyard base (SY_BASE)" "switchyard vhost switch" "switchyard vhost switch (base)"
ratio "switchyard base / OVS-DPDK" "switchyard vhost switch (base)" "ovs-dpdk NORMAL"
if [ "${WORKERS2:-0}" = 1 ]; then
    ratio "2 workers / 1 worker, Mpps (goal >= 1.8)" "switchyard vhost switch, 2 workers" "switchyard vhost switch"
    ratio_of CAPM CAPS "2 workers / 1 worker, capacity (goal >= 1.8)" "switchyard vhost switch, 2 workers" "switchyard vhost switch"
fi
echo "== ratios of busy cycles a frame (lower is cheaper)"
cratio "switchyard / OVS-DPDK (goal <= 0.5)" "switchyard vhost switch" "ovs-dpdk NORMAL"
cratio "switchyard / testpmd net_vhost io (goal <= 0.8)" "switchyard vhost switch" "testpmd net_vhost io"
cratio "switchyard io / testpmd net_vhost io" "switchyard vhost io (ref)" "testpmd net_vhost io"
cratio "switchyard / switchyard base (SY_BASE)" "switchyard vhost switch" "switchyard vhost switch (base)"
echo "   $HUGE_NOTE"

# The same by vCPU placement: a run counts for a placement when the hand-over latency before
# and after it fall in the same class (under 90 cycles: "near", 90-250: "mid", over 250: "far",
# the three placements seen on this project's VM); medians per class, and their ratios.
by_placement() {
    local l
    for l in "${LABELS[@]}"; do
        printf '%s\t%s\t%s\n' "$l" "${RUNS[$l]}" "${LATS[$l]}"
    done | awk -F'\t' '
        function cls(c) { if (c !~ /^[0-9]+$/) return ""; c += 0; return c < 90 ? "near" : (c <= 250 ? "mid" : "far") }
        function median(s,   a, n, i, j, t) {
            n = split(s, a, " ")
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
            if (n == 0) return ""
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        {
            label[NR] = $1; n = split($2, r, " "); split($3, h, " ")
            for (i = 1; i <= n; i++) {
                split(h[i], ba, "/"); c = cls(ba[1])
                if (c != "" && c == cls(ba[2]) && r[i] ~ /^[0-9.]+$/) { vals[$1, c] = vals[$1, c] " " r[i]; cnt[$1, c]++ }
            }
        }
        END {
            split("near mid far", cl, " ")
            for (k = 1; k <= 3; k++) {
                c = cl[k]; line = ""
                for (i = 1; i <= NR; i++) {
                    m = median(vals[label[i], c]); med[label[i]] = m
                    line = line sprintf("  %s %s (%d)", label[i], m == "" ? "n/a" : sprintf("%.3f", m), cnt[label[i], c])
                }
                printf "  %-4s:%s\n", c, line
                s = med["switchyard vhost switch"]; o = med["ovs-dpdk NORMAL"]; v = med["switchyard net_vhost switch"]
                if (s != "" && o != "") printf "        switchyard / OVS-DPDK %.3f (goal >= 2)\n", s / o
                if (s != "" && v != "") printf "        switchyard / net_vhost %.3f (goal >= 1)\n", s / v
            }
        }'
}
echo "== by vCPU placement (hand-over before and after a run in one class: near < 90 cycles, mid 90-250, far > 250; Mpps median (runs))"
by_placement
