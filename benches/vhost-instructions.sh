#!/bin/bash
# Instructions a frame of the switch's forwarding thread, VM to VM over vhost-user (issue 17,
# item 5), counted by callgrind: repeatable where the busy cycles of vm2vm.sh are not (they
# move with the load of a shared machine and with the cores' cache-line hand-over).
#
# usage: benches/vhost-instructions.sh [SECONDS]      (as root; default 20 s of traffic each)
# env:   SWITCHYARD=P   the switchyard binary (default target/release/switchyard)
#        OVS=0          skip OVS-DPDK; TP_VHOST=0 skip testpmd net_vhost io; SY=0 skip switchyard
#        OVS_VSWITCHD=P the DPDK build of ovs-vswitchd (default Debian's)
#        KEEP=1         keep the work directory (callgrind files, logs)
#
# The loop is vm2vm.sh's: the "VMs" are one dpdk-testpmd with two virtio-user ports (the
# vhost-user servers), io forwarding, each port's peer the other port's MAC, 32 frames of 64
# bytes injected on each port (`start tx_first`) and looped through the switch. Each contender
# runs under `valgrind --tool=callgrind --separate-threads=yes` on its own core; the VMs run
# natively, so the switch is the slow stage and nearly every poll of it finds frames.
#
# The switch's poll loop also polls when nothing is there. Each contender runs twice: with
# traffic, and idle (the VMs stopped, the frames parked in their rings). Only a window of SECS
# seconds is counted (callgrind_control), once frames go round. From the idle run, the instructions a
# poll of an RX queue cost when it finds nothing (the forwarding thread's total / its RX polls:
# `VhostRx::rx_burst` calls for switchyard, `rte_vhost_dequeue_burst` calls for the DPDK
# contenders); from the traffic run, the frames F (what the VMs received back), the polls P and
# the polls that moved frames N (TX calls: `VhostTx::tx_burst`, `rte_vhost_enqueue_burst`):
#     instructions a frame = (thread total - (P - N) x idle cost of a poll) / F
# i.e. everything the thread spent on the frames: RX from the guest (descriptors, copy, buffer
# allocation), the switch's work, TX into the other guest (copy, used ring, buffer free), the
# loop. The forwarding thread is the contender's thread with the most instructions.
#
# Contenders: switchyard `pmd --fwd switch` and `--fwd io` on its vhost-user ports (`--busy-poll
# --no-huge`), dpdk-testpmd io between two net_vhost ports (DPDK's vhost library alone, as in
# vm2vm.sh), OVS-DPDK NORMAL with two dpdkvhostuserclient ports. Memory is not hugepages for any
# of them (instruction counts do not depend on the page size).
set -euo pipefail
SECS=${1:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SWITCHYARD:-$ROOT/target/release/switchyard}
OVS_VSWITCHD=${OVS_VSWITCHD:-/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk}
OVS_SCHEMA=${OVS_SCHEMA:-/usr/share/openvswitch/vswitch.ovsschema}
VM_CORE=0
SW_CORE=1
MAC0=02:00:00:00:00:01
MAC1=02:00:00:00:00:02
[ "$(id -u)" = 0 ] || { echo "skip: needs root (DPDK, OVS)" >&2; exit 0; }
for c in valgrind dpdk-testpmd; do
    command -v "$c" >/dev/null || { echo "skip: $c not found" >&2; exit 0; }
done
[ -x "$BIN" ] || { echo "switchyard binary $BIN not found (set SWITCHYARD=)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/sy-vhost-insns.XXXXXX)
S0=$WORK/s0.sock
S1=$WORK/s1.sock
TP_PID=
TRAFFIC_FRAMES=0
SW_PID=
OVS_DIR=
TP_PREFIX=vhinsvm$$
# shellcheck source=benches/ovs.sh
. "$(dirname "$0")/ovs.sh"

ovs_stop() {
    [ -n "$OVS_DIR" ] || return 0
    timeout 60 ovs-appctl -t "$OVS_DIR/vswitchd.ctl" exit --cleanup >/dev/null 2>&1 || true
    local name
    for name in ovs-vswitchd ovsdb-server; do
        stop_pid "$(cat "$OVS_DIR/$name.pid" 2>/dev/null || true)" 10
    done
    OVS_DIR=
}
cleanup() {
    trap - EXIT INT TERM
    exec 7>&- 2>/dev/null || true
    stop_pid "$TP_PID" 10
    stop_pid "$SW_PID" 10
    ovs_stop
    [ "${KEEP:-0}" = 1 ] && echo "   kept $WORK" || rm -rf "$WORK"
    rm -rf "/var/run/dpdk/$TP_PREFIX"* /var/run/dpdk/vhins*
}
trap cleanup EXIT INT TERM

# The VMs (the vhost-user servers), interactive through a FIFO on fd 7, their output line by
# line (read while they run).
VM_N=0
vm_start() {
    # a file prefix of its own each time: a VM still going down keeps its EAL lock
    VM_N=$((VM_N + 1))
    rm -f "$S0" "$S1" "$WORK/vm.in"
    mkfifo "$WORK/vm.in"
    stdbuf -oL taskset -c "$VM_CORE" dpdk-testpmd --lcores "0@$VM_CORE,1@$VM_CORE" --no-huge -m 512 --no-pci \
        --file-prefix "$TP_PREFIX$VM_N" --log-level=pmd.net.virtio.*:warning \
        --vdev "net_virtio_user0,path=$S0,server=1,queues=1,queue_size=256,mac=$MAC0" \
        --vdev "net_virtio_user1,path=$S1,server=1,queues=1,queue_size=256,mac=$MAC1" \
        -- -i --nb-cores=1 --forward-mode=io --burst=32 --rxd=256 --txd=256 --txpkts=64 \
        --total-num-mbufs=16384 --eth-peer="0,$MAC1" --eth-peer="1,$MAC0" \
        <"$WORK/vm.in" >"$WORK/vm.out" 2>&1 &
    TP_PID=$!
    exec 7>"$WORK/vm.in"
}
vm_cmd() { echo "$*" >&7; }
# The VMs' received frames so far, both ports (their NIC counters), once testpmd printed them.
vm_rx() {
    local n i
    n=$(grep -c 'NIC statistics for port 1' "$WORK/vm.out" || true)
    vm_cmd "show port stats all"
    for ((i = 0; i < 50; i++)); do
        [ "$(grep -c 'NIC statistics for port 1' "$WORK/vm.out" || true)" -gt "$n" ] && break
        sleep 0.1
    done
    sleep 0.2
    grep -E '^ *RX-packets: +[0-9]+ +RX-missed' "$WORK/vm.out" | tail -2 | awk '{s += $2} END {print s + 0}'
}
# Waits (up to 180 s: the switch starts under valgrind) until frames go round (the VMs' links
# read up before a switch connects, and frames sent before it set the rings up are lost:
# `start tx_first` again until they come back), then counts the switch's instructions in a
# window ($1: traffic: the VMs forward for SECS seconds inside it; idle: they do not, the
# switch polling rings with nothing new) and stops the VMs. The VMs are stopped when the
# window opens and closes, so FRAMES, what they received in between, is what the switch
# forwarded in it (to the 128 frames in flight).
vm_run() {
    local i rx0
    FRAMES=0
    for ((i = 0; i < 45; i++)); do
        vm_cmd "start tx_first"
        sleep 3
        [ "$(vm_rx)" -gt 0 ] && break
        vm_cmd "stop"
        sleep 1
    done
    if [ "$i" = 45 ]; then
        echo "   no frame came back through the switch" >&2
        stop_pid "$TP_PID" 10
        TP_PID=
        return 1
    fi
    vm_cmd "stop"
    sleep 2
    rx0=$(vm_rx)
    # instructions counted from here to the end of the window only (--instr-atstart=no), and
    # dumped then (part 1 of the callgrind files): the switch's start, its polls before and
    # after, and its exit are not
    callgrind_control -i on "$CG_PID" >/dev/null 2>&1
    if [ "$1" = traffic ]; then
        # the frames parked in the rings, and 64 more
        vm_cmd "start tx_first"
        sleep "$SECS"
        vm_cmd "stop"
        sleep 2
    else
        sleep "$SECS"
    fi
    callgrind_control --dump=window "$CG_PID" >/dev/null 2>&1
    callgrind_control -i off "$CG_PID" >/dev/null 2>&1
    FRAMES=$(($(vm_rx) - rx0))
    vm_cmd "quit"
    exec 7>&-
    for ((i = 0; i < 100; i++)); do
        alive "$TP_PID" || break
        sleep 0.1
    done
    stop_pid "$TP_PID" 10
    TP_PID=
}

# "TOTAL POLLS TXCALLS" of the busiest thread's callgrind file among $1.1-* (the window's
# dump, one file a thread); $2: the RX poll
# function, $3: the TX function (regular expressions on callgrind's function names).
counts() {
    python3 - "$1" "$2" "$3" <<'EOF'
import glob, re, sys, collections
best = None
for f in glob.glob(sys.argv[1] + '.1-*'):
    names, calls, total, pend = {}, collections.Counter(), 0, None
    for line in open(f, errors='replace'):
        m = re.match(r'(c?fn)=\((\d+)\)(?: (.*))?', line)
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3).strip()
            if m.group(1) == 'cfn':
                pend = names.get(m.group(2), '')
            continue
        if line.startswith('calls='):
            calls[pend] += int(line[6:].split()[0])
        elif line.startswith(('summary:', 'totals:')):
            total = int(line.split()[1])
    if best is None or total > best[0]:
        rx = sum(v for k, v in calls.items() if k and re.search(sys.argv[2], k))
        tx = sum(v for k, v in calls.items() if k and re.search(sys.argv[3], k))
        best = (total, rx, tx)
print(*(best or (0, 0, 0)))
EOF
}

VG=(valgrind --tool=callgrind --separate-threads=yes --instr-atstart=no)
declare -A RESULT
# per-frame figure from a traffic run and an idle run of label $1 ($2 $3: poll / TX functions)
figure() {
    local label=$1 rx=$2 tx=$3 t p n it ip _
    read -r t p n < <(counts "$WORK/cg.$label" "$rx" "$tx")
    read -r it ip _ < <(counts "$WORK/cg.$label.idle" "$rx" "$tx")
    if [ "${FRAMES:-0}" -gt 0 ] && [ "$t" -gt 0 ] && [ "$ip" -gt 0 ]; then
        RESULT[$label]=$(python3 -c "t,p,n,it,ip,f=$t,$p,$n,$it,$ip,$FRAMES; print(f'{(t-(p-n)*it/ip)/f:.1f}')")
        echo "   $label: $FRAMES frames, thread $t instructions, $p RX polls ($n moved frames); idle: $it over $ip polls ($(python3 -c "print(f'{$it/$ip:.1f}')") a poll) -> ${RESULT[$label]} instructions a frame"
    else
        echo "   $label: no figure (frames ${FRAMES:-0}, idle polls $ip)" >&2
    fi
}

# run LABEL MODE CMD...: the contender CMD (SOCK0/SOCK1 replaced) under callgrind with the VMs
# (MODE: traffic or idle); a contender that ends by itself ends when the VMs are done.
run() {
    local label=$1 mode=$2 out
    shift 2
    out=$WORK/cg.$label
    [ "$mode" = idle ] && out=$out.idle
    local args=() a
    for a in "$@"; do
        a=${a//SOCK0/$S0}
        a=${a//SOCK1/$S1}
        args+=("$a")
    done
    vm_start
    sleep 2
    # stdin a FIFO held open here: testpmd without -i forwards until it reads a line
    rm -f "$WORK/sw.in"
    mkfifo "$WORK/sw.in"
    exec 9<>"$WORK/sw.in"
    taskset -c "$SW_CORE" "${VG[@]}" --callgrind-out-file="$out" "${args[@]}" >"$WORK/sw.out" 2>&1 <&9 &
    SW_PID=$!
    CG_PID=$SW_PID
    vm_run "$mode" || true
    stop_pid "$SW_PID" 10
    SW_PID=
    exec 9>&-
    [ "$mode" = idle ] || TRAFFIC_FRAMES=$FRAMES
}

SY_RX='VhostRx as switchyard_dataplane::port::RxQueue>::rx_burst'
SY_TX='VhostTx as switchyard_dataplane::port::TxQueue>::tx_burst'
echo "== instructions a frame of the switch's forwarding thread, VM to VM over vhost-user ($SECS s of traffic each, load average $(cut -d' ' -f1-3 /proc/loadavg))"
for fwd in switch io; do
    [ "${SY:-1}" != 0 ] || break
    label="switchyard-$fwd"
    cmd=("$BIN" pmd --busy-poll --no-huge --lcores "$SW_CORE" --fwd "$fwd" --port vhost:SOCK0,client --port vhost:SOCK1,client)
    echo "   $label: ${cmd[*]}"
    run "$label" traffic "${cmd[@]}"
    run "$label" idle "${cmd[@]}"
    FRAMES=$TRAFFIC_FRAMES figure "$label" "$SY_RX" "$SY_TX"
done

if [ "${TP_VHOST:-1}" != 0 ]; then
    label=testpmd-net_vhost-io
    cmd=(dpdk-testpmd --lcores "0@$SW_CORE,1@$SW_CORE" --no-huge -m 1024 --no-pci --file-prefix "vhinssw$$"
        --log-level=pmd.net.vhost.*:warning --log-level=lib.vhost.*:warning
        --vdev "net_vhost0,iface=SOCK0,client=1,queues=1" --vdev "net_vhost1,iface=SOCK1,client=1,queues=1"
        -- --auto-start --nb-cores=1 --forward-mode=io --burst=32 --rxd=1024 --txd=1024 --total-num-mbufs=16384)
    echo "   $label: ${cmd[*]}"
    run "$label" traffic "${cmd[@]}"
    run "$label" idle "${cmd[@]}"
    FRAMES=$TRAFFIC_FRAMES figure "$label" '^rte_vhost_dequeue_burst' '^rte_vhost_enqueue_burst'
fi

if [ "${OVS:-1}" != 0 ] && [ -x "$OVS_VSWITCHD" ] && command -v ovsdb-server >/dev/null; then
    label=ovs-dpdk-NORMAL
    for mode in traffic idle; do
        OVS_DIR=$WORK/ovs
        rm -rf "$OVS_DIR"
        mkdir -p "$OVS_DIR"
        out=$WORK/cg.$label
        [ "$mode" = idle ] && out=$out.idle
        mask=$(printf '0x%x' $((1 << SW_CORE)))
        config=(set Open_vSwitch . other_config:dpdk-init=true
            "other_config:dpdk-extra=--no-huge --legacy-mem -m 2048 --no-pci --file-prefix vhinsovs$$"
            "other_config:dpdk-lcore-mask=$mask" "other_config:pmd-cpu-mask=$mask")
        bridge=(add-br vm2vm -- set bridge vm2vm datapath_type=netdev
            -- add-port vm2vm vm0 -- set interface vm0 type=dpdkvhostuserclient "options:vhost-server-path=$S0"
            -- add-port vm2vm vm1 -- set interface vm1 type=dpdkvhostuserclient "options:vhost-server-path=$S1")
        # ovs-vswitchd in the foreground under valgrind (ovs_up wants a command that returns)
        vsw=(bash -c "unshare --net taskset -c $SW_CORE ${VG[*]} --callgrind-out-file=$out $OVS_VSWITCHD unix:$OVS_DIR/db.sock --pidfile=$OVS_DIR/ovs-vswitchd.pid --log-file=$OVS_DIR/ovs-vswitchd.log --unixctl=$OVS_DIR/vswitchd.ctl </dev/null >$OVS_DIR/vg.out 2>&1 & for i in \$(seq 1 120); do [ -S $OVS_DIR/vswitchd.ctl ] && exit 0; sleep 1; done; exit 1")
        echo "   $label ($mode): ovs-vswitchd under callgrind, ovs-vsctl ${bridge[*]}"
        vm_start
        if ovs_up config vsw bridge vm0 vm1; then
            CG_PID=$(cat "$OVS_DIR/ovs-vswitchd.pid")
            vm_run "$mode" || true
            [ "$mode" = idle ] || TRAFFIC_FRAMES=$FRAMES
        else
            echo "   $label: $OVS_FAIL" >&2
            stop_pid "$TP_PID" 10
            TP_PID=
        fi
        ovs_stop
    done
    FRAMES=$TRAFFIC_FRAMES figure "$label" '^rte_vhost_dequeue_burst' '^rte_vhost_enqueue_burst'
fi

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
sw=${RESULT[switchyard-switch]:-}
if [ -n "$sw" ]; then
    [ -n "${RESULT[testpmd-net_vhost-io]:-}" ] &&
        echo "   switchyard switch / testpmd net_vhost io: $(ratio "$sw" "${RESULT[testpmd-net_vhost-io]}") (instructions a frame)"
    [ -n "${RESULT[ovs-dpdk-NORMAL]:-}" ] &&
        echo "   switchyard switch / OVS-DPDK NORMAL: $(ratio "$sw" "${RESULT[ovs-dpdk-NORMAL]}") (instructions a frame)"
    [ -n "${RESULT[switchyard-io]:-}" ] &&
        echo "   switchyard switch / switchyard io: $(ratio "$sw" "${RESULT[switchyard-io]}")"
fi
