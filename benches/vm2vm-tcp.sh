#!/usr/bin/env bash
# A bulk TCP transfer VM to VM through the switch over vhost-user: switchyard with the guests'
# offloads (`vhost:PATH,offloads`: checksum and TSO offered both ways, the sending guest hands
# over up to 64 KiB super-frames that switchyard segments, the receiving guest gets the runs of
# segments merged into super-frames again), the same with the receive side turned off in the
# guests' devices (QEMU's guest_csum/guest_tso4/guest_tso6=off: TX offloads only, the receiving
# guest gets MSS-sized frames), switchyard without offloads (the guests segment and checksum
# themselves), and Open vSwitch with DPDK with `other_config:userspace-tso-enable=true`
# (dpdkvhostuserclient ports, NORMAL action) when its DPDK build is installed. It prints each
# contender's Gbit/s and the ratios; it asserts nothing.
#
# The VMs: two QEMU guests, the tiny Debian kernel + busybox guest of the QEMU tests
# (scripts/qemu-guest-assets.sh, built when missing), one vCPU and 512 MiB each (memfd, shared),
# virtio-net-pci on the contender's vhost-user socket, under TCG by default (ACCEL=kvm where
# the machine has working KVM). Guest B listens with `nc -l`; guest A sends SIZE_MB MiB of
# zeros with `dd if=/dev/zero bs=64k | nc B`, timed by A's /proc/uptime around it (10 ms
# resolution; nc returns once its last bytes are in A's socket buffer: a few hundred KiB of
# the transfer, under 1% at the default size). Under TCG the guests' emulated
# CPUs are the bottleneck, so the figure says what offloads save the guest (its per-segment
# work), not what the switch can forward.
#
# usage: benches/vm2vm-tcp.sh
# env:   SWITCHYARD=P   the switchyard binary (default target/release/switchyard)
#        SIZE_MB=N      MiB per transfer (default 256)     ROUNDS=N  rounds (default 3; median)
#        VM_CORE=C      core of both QEMUs (default 0)     SW_CORE=C the switch's core (default 1)
#        ACCEL=tcg|kvm  (default tcg)                      OVS=0     skip OVS-DPDK
#        BACKOFF=1      switchyard without --busy-poll (its idle back-off)
#        KEEP=1         keep the work directory (consoles, logs)
#        ONLY=TEXT      run only the contenders whose label contains TEXT
#        OVS_VSWITCHD=P the DPDK build of ovs-vswitchd (default Debian's
#                       /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=benches/hugepages.sh
. "$ROOT/benches/hugepages.sh"
BIN=${SWITCHYARD:-${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard}
SIZE_MB=${SIZE_MB:-256}
ROUNDS=${ROUNDS:-3}
VM_CORE=${VM_CORE:-0}
SW_CORE=${SW_CORE:-1}
ACCEL=${ACCEL:-tcg}
OVS_VSWITCHD=${OVS_VSWITCHD:-/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk}
OVS_SCHEMA=${OVS_SCHEMA:-/usr/share/openvswitch/vswitch.ovsschema}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
[ -x "$BIN" ] || { echo "$BIN not found: cargo build --release first" >&2; exit 1; }
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 not found" >&2; exit 1; }
ASSETS=$(bash "$ROOT/scripts/qemu-guest-assets.sh" | tail -n1)
have_ovs=0
if [ "${OVS:-1}" != 0 ] && [ -x "$OVS_VSWITCHD" ] && [ -r "$OVS_SCHEMA" ] && command -v ovsdb-server >/dev/null; then
    have_ovs=1
fi
WORK=$(mktemp -d /tmp/vm2vm-tcp.XXXXXX)
PIDS=() OVS_DIR=
OVS_PREFIX=vm2vmtcp$$

stop_pid() {
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
ovs_stop() {
    [ -n "$OVS_DIR" ] || return 0
    timeout 10 env OVS_RUNDIR="$OVS_DIR" ovs-appctl -t "$OVS_DIR/vswitchd.ctl" exit --cleanup >/dev/null 2>&1 || true
    for name in ovs-vswitchd ovsdb-server; do stop_pid "$(cat "$OVS_DIR/$name.pid" 2>/dev/null || echo)"; done
    OVS_DIR=
}
stop_all() {
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    PIDS=()
    ovs_stop
}
cleanup() {
    stop_all
    huge_release
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap "exit 130" INT
trap "exit 143" TERM

# QEMU 7.2 under TCG crashes with MSI-X on a vhost-user device (see tests/qemu_common).
vectors=
qemu_major=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n1)
[ "$ACCEL" = tcg ] && [ "${qemu_major:-0}" -lt 10 ] && vectors=,vectors=0

# guest NAME SOCKET CHARDEV_OPTS MAC IP SCRIPT: starts a QEMU guest running SCRIPT; console in
# $WORK/NAME.console.
guest() {
    local name=$1 sock=$2 chopts=$3 mac=$4 ip=$5 script=$6 hex
    hex=$(printf '%s' "$script" | od -An -v -tx1 | tr -d ' \n')
    taskset -c "$VM_CORE" qemu-system-x86_64 -accel "$ACCEL" -smp 1 -m 512M \
        -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
        -chardev "socket,id=c0,path=$sock$chopts" -netdev vhost-user,id=n0,chardev=c0 \
        -device "virtio-net-pci,netdev=n0,mac=$mac$vectors$DEV_EXTRA" \
        -kernel "$ASSETS/vmlinuz" -initrd "$ASSETS/initramfs.cpio.gz" \
        -append "console=ttyS0 panic=-1 ipv6.disable=1 loglevel=4 sy.ip=$ip/24 sy.run=$hex" \
        -display none -serial "file:$WORK/$name.console" -monitor none -nodefaults -no-reboot \
        >"$WORK/$name.qemu" 2>&1 &
    PIDS+=($!)
}
# wait_for FILE PATTERN SECONDS
wait_for() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# One transfer between guests on sockets $1 (A) and $2 (B), QEMU's chardev options $3; sets
# RESULT to the Gbit/s, or n/a. (Results go through RESULT, not $(...), so that the processes
# started here are in PIDS for stop_all.)
transfer() {
    local count=$((SIZE_MB * 16))
    rm -f "$WORK"/a.console "$WORK"/b.console
    # B prints its CPU's busy ticks (user, nice, system, irq, softirq of /proc/stat) around
    # the transfer: what receiving cost its stack.
    guest b "$2" "$3" 52:54:00:00:00:0b 198.51.100.3 'busy() { head -n1 /proc/stat | awk "{ print \$2 + \$3 + \$4 + \$7 + \$8 }"; }; echo "SWITCHYARD-GUEST: listening"; b0=$(busy); nc -l -p 5001 >/dev/null; echo "SWITCHYARD-GUEST: busy $(($(busy) - b0)) ticks"'
    RESULT=n/a BUSY=n/a
    wait_for "$WORK/b.console" "SWITCHYARD-GUEST: listening" 120 || return 0
    guest a "$1" "$3" 52:54:00:00:00:0a 198.51.100.2 \
        "sleep 1; t0=\$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=65536 count=$count 2>/dev/null | nc 198.51.100.3 5001; echo \"SWITCHYARD-GUEST: sent $((count * 65536)) from \$t0 to \$(cut -d' ' -f1 /proc/uptime)\""
    wait_for "$WORK/a.console" "SWITCHYARD-GUEST: sent" "${XFER_WAIT:-300}" || return 0
    RESULT=$(sed -n 's/.*SWITCHYARD-GUEST: sent \([0-9]*\) from \([0-9.]*\) to \([0-9.]*\).*/\1 \2 \3/p' "$WORK/a.console" |
        head -n1 | awk '{ printf "%.3f\n", $1 * 8 / ($3 - $2) / 1e9 }')
    # Guest B's busy time a MiB received (USER_HZ ticks of 10 ms).
    wait_for "$WORK/b.console" "SWITCHYARD-GUEST: busy" 30 || return 0
    BUSY=$(sed -n 's/.*SWITCHYARD-GUEST: busy \([0-9]*\) ticks.*/\1/p' "$WORK/b.console" | head -n1 |
        awk -v mb="$SIZE_MB" '{ printf "%.1f\n", $1 * 10 / mb }')
}

# Extra virtio-net-pci properties of both guests' devices.
DEV_EXTRA=
# The receive-side offloads off in the guest's device (QEMU then never offers them to the guest).
NO_GUEST_RX=,guest_csum=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,guest_ufo=off

switchyard() { # label offloads(0|1) [device properties]
    local opt= busy=(--busy-poll)
    [ "$2" = 1 ] && opt=,offloads
    DEV_EXTRA=${3:-}
    [ "$ROUND" = 1 ] && [ -n "$DEV_EXTRA" ] && echo "   $1: guests' virtio-net-pci$DEV_EXTRA" >&2
    [ "${BACKOFF:-0}" = 1 ] && busy=()
    local cmd=(taskset -c "$SW_CORE" "$BIN" pmd --fwd switch --lcores "$SW_CORE" "${busy[@]}"
        --port "vhost:$WORK/a.sock$opt" --port "vhost:$WORK/b.sock$opt")
    [ "$ROUND" = 1 ] && echo "   $1: ${cmd[*]}" >&2
    "${cmd[@]}" >"$WORK/sw.out" 2>&1 &
    PIDS+=($!)
    RESULT=n/a
    wait_for "$WORK/sw.out" "Forwarding" 10 || return 0
    transfer "$WORK/a.sock" "$WORK/b.sock" ""
}

ovs() { # label tso(true|false)
    OVS_DIR=$WORK/ovs
    rm -rf "$OVS_DIR"
    mkdir -p "$OVS_DIR"
    local env=(env OVS_RUNDIR="$OVS_DIR" OVS_LOGDIR="$OVS_DIR" OVS_DBDIR="$OVS_DIR")
    local vsctl=("${env[@]}" ovs-vsctl --db="unix:$OVS_DIR/db.sock")
    local mask eal="--no-pci --file-prefix $OVS_PREFIX"
    mask=$(printf '0x%x' $((1 << SW_CORE)))
    [ "$HUGE" = 0 ] && eal="--no-huge --legacy-mem -m 2048 $eal"
    local config=(set Open_vSwitch . other_config:dpdk-init=true "other_config:dpdk-extra=$eal"
        "other_config:dpdk-lcore-mask=$mask" "other_config:pmd-cpu-mask=$mask"
        "other_config:userspace-tso-enable=$2")
    # Client ports (QEMU serves the sockets): OVS 3.1 sets userspace TSO up on those only
    # (server-mode dpdkvhostuser ports drop every offloaded packet: "No TCP checksum support").
    local bridge=(add-br tcp -- set bridge tcp datapath_type=netdev
        -- add-port tcp vma -- set interface vma type=dpdkvhostuserclient "options:vhost-server-path=$WORK/a.sock"
        -- add-port tcp vmb -- set interface vmb type=dpdkvhostuserclient "options:vhost-server-path=$WORK/b.sock")
    [ "$ROUND" = 1 ] && echo "   $1: ovs-vsctl ${config[*]}; ovs-vsctl ${bridge[*]}" >&2
    if ! ovsdb-tool create "$OVS_DIR/conf.db" "$OVS_SCHEMA" >"$OVS_DIR/setup.out" 2>&1 ||
        ! "${env[@]}" ovsdb-server "$OVS_DIR/conf.db" --remote="punix:$OVS_DIR/db.sock" \
            --pidfile="$OVS_DIR/ovsdb-server.pid" --unixctl="$OVS_DIR/ovsdb-server.ctl" --detach >>"$OVS_DIR/setup.out" 2>&1 ||
        ! "${vsctl[@]}" --no-wait init >>"$OVS_DIR/setup.out" 2>&1 ||
        ! "${vsctl[@]}" --no-wait "${config[@]}" >>"$OVS_DIR/setup.out" 2>&1 ||
        ! timeout 120 "${env[@]}" unshare --net taskset -c "$SW_CORE" "$OVS_VSWITCHD" "unix:$OVS_DIR/db.sock" \
            --pidfile="$OVS_DIR/ovs-vswitchd.pid" --log-file="$OVS_DIR/ovs-vswitchd.log" \
            --unixctl="$OVS_DIR/vswitchd.ctl" --detach >>"$OVS_DIR/setup.out" 2>&1 ||
        ! "${vsctl[@]}" --timeout=120 "${bridge[@]}" >>"$OVS_DIR/setup.out" 2>&1; then
        echo "$1: OVS failed: $(tail -3 "$OVS_DIR/setup.out")" >&2
        RESULT=n/a
        return 0
    fi
    DEV_EXTRA=
    rm -f "$WORK/a.sock" "$WORK/b.sock"
    transfer "$WORK/a.sock" "$WORK/b.sock" ",server=on,wait=off"
}

huge_setup "${HUGE_PAGES:-1024}"
LABELS=("switchyard offloads" "switchyard TX offloads only" "switchyard no offloads")
[ "$have_ovs" = 1 ] && LABELS+=("OVS-DPDK userspace-tso")
if [ -n "${ONLY:-}" ]; then
    kept=()
    for l in "${LABELS[@]}"; do [[ "$l" == *"$ONLY"* ]] && kept+=("$l"); done
    LABELS=("${kept[@]}")
fi
declare -A RES BUS
echo "== VM to VM bulk TCP over vhost-user: $SIZE_MB MiB a transfer, QEMU ($ACCEL) guests on core $VM_CORE, the switch on core $SW_CORE"
echo "   load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    for l in "${LABELS[@]}"; do
        case $l in
        "switchyard offloads") switchyard "$l" 1 ;;
        "switchyard TX offloads only") switchyard "$l" 1 "$NO_GUEST_RX" ;;
        "switchyard no offloads") switchyard "$l" 0 ;;
        "OVS-DPDK userspace-tso") ovs "$l" true ;;
        esac
        g=$RESULT b=$BUSY
        stop_all
        printf '  round %d %-28s %s Gbit/s, receiving guest busy %s ms a MiB\n' "$ROUND" "$l" "$g" "$b"
        RES[$l]+="$g "
        BUS[$l]+="$b "
    done
done
median() { tr ' ' '\n' <<<"$1" | grep -E '^[0-9.]+$' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
echo "== medians of $ROUNDS rounds"
for l in "${LABELS[@]}"; do
    printf '  %-28s %s Gbit/s, receiving guest busy %s ms a MiB\n' "$l" "$(median "${RES[$l]}")" "$(median "${BUS[$l]}")"
done
on=$(median "${RES["switchyard offloads"]:-}") off=$(median "${RES["switchyard no offloads"]:-}")
txo=$(median "${RES["switchyard TX offloads only"]:-}")
ratio() { awk -v a="$2" -v b="$3" -v l="$1" 'BEGIN { printf "  %s: %s\n", l, (b + 0 > 0 && a + 0 > 0) ? sprintf("%.2fx", a / b) : "n/a" }'; }
ratio "switchyard offloads / no offloads" "$on" "$off"
ratio "switchyard offloads / TX offloads only (what the guest RX side adds)" "$on" "$txo"
ratio "receiving guest busy a MiB, TX offloads only / offloads (what merging saves it)" \
    "$(median "${BUS["switchyard TX offloads only"]:-}")" "$(median "${BUS["switchyard offloads"]:-}")"
if [ "$have_ovs" = 1 ]; then
    ratio "switchyard offloads / OVS-DPDK userspace-tso" "$on" "$(median "${RES["OVS-DPDK userspace-tso"]:-}")"
fi
echo "   load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
