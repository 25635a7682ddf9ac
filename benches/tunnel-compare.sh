#!/usr/bin/env bash
# The DPDK fast path of a VXLAN tunnel port against OVS-DPDK's userspace VXLAN tunnel, one
# forwarding core each, one contender at a time, in interleaved rounds. Both forward frames
# between a local port and a VXLAN tunnel on an uplink, both ports DPDK net_pcap vdevs fed by
# the same captures:
#  - local port p0: A.pcap, N inner frames (benches/gen_pcaps.py, 60 bytes, N source MACs each
#    to one of B's sources) -- the encap direction;
#  - uplink p1: B.pcap's frames wrapped in VXLAN (VNI 5001) from 10.99.0.2 / 02:00:00:00:99:02
#    to 10.99.0.1 / 02:00:00:00:99:01, UDP zero checksum, by scapy (benches/gen_tunnel_pcap.py,
#    110 bytes) -- the decap direction.
# Contenders:
#  - switchyard: `switchyard run --switch FILE --lcores CORE --busy-poll`, one bridge with the
#    dpdk port p0 and `type: vxlan, local: 10.99.0.1, underlay: "dpdk:net_pcap1,..."`, flood
#    [10.99.0.2] (learning on). The endpoint's MAC is learned from the decap direction's
#    packets (no ARP reply can come from a capture). Also, as `sy-default` (DEFAULT=0 leaves it
#    out), the same without `--busy-poll`, as `run` starts by default, reported apart: the
#    captures are read forever, so no poll comes back empty and the idle back-off never
#    starts; it shows that the default costs nothing at saturation, not how it idles.
#  - OVS-DPDK (Debian's ovs-vswitchd-dpdk, private ovsdb and vswitchd as in pmd-compare.sh, in
#    a network namespace of its own): netdev bridge br-int with p0 and a `type=vxlan` port
#    (remote_ip 10.99.0.2, local_ip 10.99.0.1, key 5001), netdev bridge br-phy with p1, its MAC
#    02:00:00:00:99:01 and address 10.99.0.1/24 on its internal port (the route to the endpoint
#    is that connected route), `ovs-appctl tnl/neigh/set br-phy 10.99.0.2 02:00:00:00:99:02`;
#    NORMAL on both bridges.
# First a check per contender with captures read once (no infinite_rx) and written out
# (tx_pcap): frames out of each port counted, a few checked with tshark (outer Ethernet, IPv4,
# UDP and VXLAN headers, the inner frame as sent). Then ROUNDS rounds: per contender, frames
# out of both ports (TX counters: switchyard's `ctl show stats`, OVS's dpctl/show -s) over
# SECS seconds, and the forwarding thread's CPU time per frame out (schedstat, as
# pmd-compare.sh reads it). Medians, and the ratios switchyard / OVS-DPDK, of the wall-clock
# rates and of the rates per CPU-second. It asserts nothing.
#
# usage: benches/tunnel-compare.sh [SECONDS]     (default 5 s per contender and round)
# env:   ROUNDS=3  MACS=256  DEFAULT=1  CORE=C (default: the last core)  HUGEPAGES=0 (see hugepages.sh)
#        OVS_VSWITCHD=P (default Debian's /usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk)
#        BUILD=0 (use target/release/switchyard as it is)  CARGO_TARGET_DIR as cargo uses it
set -euo pipefail

SECS=${1:-5}
# shellcheck source=benches/hugepages.sh
. "$(dirname "$0")/hugepages.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
ROUNDS=${ROUNDS:-3}
MACS=${MACS:-256}
OVS_VSWITCHD=${OVS_VSWITCHD:-/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk}
OVS_SCHEMA=${OVS_SCHEMA:-/usr/share/openvswitch/vswitch.ovsschema}
# shellcheck source=benches/one-core.sh
. "$(dirname "$0")/one-core.sh"
# scapy from Debian's python3-scapy (scripts/setup.sh), whatever python3 comes first in PATH.
PY=/usr/bin/python3
LOCAL_MAC=02:00:00:00:99:01
REMOTE_MAC=02:00:00:00:99:02

if [ "${BUILD:-1}" != 0 ]; then
    echo "== building: cargo build --release --features dpdk"
    (cd "$ROOT" && cargo build --release -j "$NCPU" --features dpdk >&2)
fi
BIN=$TARGET/release/switchyard

WORK=$(mktemp -d /tmp/tunnel-compare.XXXXXX)
OVS_DIR=
SY_PID=
stop_pid() { # pid
    kill "$1" 2>/dev/null || return 0
    local i
    for ((i = 0; i < 100; i++)); do
        alive "$1" || return 0
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null || true
}
ovs_stop() {
    [ -n "$OVS_DIR" ] || return 0
    local name pid
    ovs-appctl -t "$OVS_DIR/vswitchd.ctl" exit --cleanup >/dev/null 2>&1 || true
    for name in ovs-vswitchd ovsdb-server; do
        pid=$(cat "$OVS_DIR/$name.pid" 2>/dev/null) || continue
        [ -n "$pid" ] && stop_pid "$pid"
    done
    rm -rf "$OVS_DIR" "/var/run/dpdk/tnlovs$$"
    OVS_DIR=
}
sy_stop() {
    [ -n "$SY_PID" ] || return 0
    stop_pid "$SY_PID"
    wait "$SY_PID" 2>/dev/null || true
    SY_PID=
}
cleanup() {
    sy_stop
    ovs_stop
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK" "/var/run/dpdk/tnlsy$$"
    huge_release
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

huge_setup "${HUGE_PAGES:-1024}"

echo "== captures in $WORK"
python3 "$ROOT/benches/gen_pcaps.py" --macs "$MACS" "$WORK/a.pcap" "$WORK/b.pcap"
"$PY" "$ROOT/benches/gen_tunnel_pcap.py" --vni 5001 --src-mac "$REMOTE_MAC" --dst-mac "$LOCAL_MAC" \
    --src 10.99.0.2 --dst 10.99.0.1 "$WORK/b.pcap" "$WORK/benc.pcap"


# Every contender runs in network namespace $NS. For the check, veth pairs c0/c0p and c1/c1p
# in it: the ports read c0 and c1 (net_pcap's rx_iface) once the contender is up, and the
# captures are sent into c0p and c1p.
NS=tnc$$
ip netns add "$NS"
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
for i in 0 1; do
    ip -n "$NS" link add "c$i" type veth peer name "c${i}p"
    ip -n "$NS" link set "c$i" up
    ip -n "$NS" link set "c${i}p" up
done
inject() { # capture veth
    ip netns exec "$NS" "$PY" -c 'import sys
from scapy.all import rdpcap, sendp
sendp(rdpcap(sys.argv[1]), iface=sys.argv[2], inter=0.001, verbose=False)' "$1" "$2"
}

# net_pcap devargs of port 0 (A) and 1 (encapsulated B): read forever, TX dropped (counted), or
# with "check": read from c0 or c1, TX written to $WORK/<contender>-p<i>.pcap.
devargs() { # i check|run contender
    local rx
    rx=$([ "$1" = 0 ] && echo "$WORK/a.pcap" || echo "$WORK/benc.pcap")
    if [ "$2" = check ]; then
        echo "net_pcap$1,rx_iface=c$1,tx_pcap=$WORK/$3-p$1.pcap"
    else
        echo "net_pcap$1,rx_pcap=$rx,infinite_rx=1"
    fi
}

# ---- switchyard ----
sy_ctl() { "$BIN" ctl --socket "$WORK/sy.sock" "$@"; }
sy_tx() { # frames out of p0 and tun0, summed
    sy_ctl show stats | awk '/^port (p0|tun0) / {for (i = 1; i < NF; i++) if ($i == "tx") {gsub(/[^0-9]/, "", $(i + 1)); s += $(i + 1)}} END {print s + 0}'
}
sy_start() { # check|run [default: without --busy-poll]
    cat >"$WORK/sy.yaml" <<EOF
bridges:
- name: br
  ports:
  - {name: p0, type: dpdk, devargs: "$(devargs 0 "$1" sy)"}
  - {name: tun0, type: vxlan, vni: 5001, local: 10.99.0.1, underlay: "dpdk:$(devargs 1 "$1" sy)", flood: [10.99.0.2]}
EOF
    rm -f "$WORK/sy.sock"
    ip netns exec "$NS" "$BIN" run --switch "$WORK/sy.yaml" --socket "$WORK/sy.sock" --lcores "$CORE" $([ "${2:-}" = default ] || echo --busy-poll) \
        --cni-state "$WORK/cni" --vhost-dir "$WORK/vhost" >"$WORK/sy.log" 2>&1 &
    SY_PID=$!
    local i
    for ((i = 0; i < 200; i++)); do
        [ -S "$WORK/sy.sock" ] && sy_ctl show stats 2>/dev/null | grep -q '^port tun0 ' && return 0
        alive "$SY_PID" || break
        sleep 0.1
    done
    echo "switchyard did not start: $(tail -5 "$WORK/sy.log")" >&2
    return 1
}

# ---- OVS-DPDK ----
OVS_ENV=()
ovs_vsctl() { "${OVS_ENV[@]}" ovs-vsctl --db="unix:$OVS_DIR/db.sock" "$@"; }
ovs_appctl() { "${OVS_ENV[@]}" ovs-appctl -t "$OVS_DIR/vswitchd.ctl" "$@"; }
ovs_tx() { # TX packets of p0 and p1, summed
    ovs_appctl dpctl/show -s |
        awk '/^ +port [0-9]+: p[01] / {p = 1; next} p && /TX packets:/ {sub(/.*TX packets:/, ""); s += $1; p = 0} END {print s + 0}'
}
OVS_SETUP=()
ovs_start() { # check|run
    OVS_DIR=$WORK/ovs
    mkdir -p "$OVS_DIR"
    OVS_ENV=(env OVS_RUNDIR="$OVS_DIR" OVS_LOGDIR="$OVS_DIR" OVS_DBDIR="$OVS_DIR")
    local lmask pmask eal="--no-pci --file-prefix tnlovs$$"
    lmask=$(printf '0x%x' $((1 << MAIN_CORE)))
    pmask=$(printf '0x%x' $((1 << CORE)))
    [ "$HUGE" = 0 ] && eal="--no-huge --legacy-mem -m 2048 $eal"
    local config=(set Open_vSwitch . other_config:dpdk-init=true "other_config:dpdk-extra=$eal"
        "other_config:dpdk-lcore-mask=$lmask" "other_config:pmd-cpu-mask=$pmask")
    # The dpdk ports last, once the tunnel's route and neighbour are in place.
    local bridges=(add-br br-int -- set bridge br-int datapath_type=netdev
        -- add-port br-int vxlan0 -- set interface vxlan0 type=vxlan options:remote_ip=10.99.0.2
        options:local_ip=10.99.0.1 options:key=5001
        -- add-br br-phy -- set bridge br-phy datapath_type=netdev "other_config:hwaddr=$LOCAL_MAC")
    local ports=(add-port br-int p0 -- set interface p0 type=dpdk "options:dpdk-devargs=$(devargs 0 "$1" ovs)"
        -- add-port br-phy p1 -- set interface p1 type=dpdk "options:dpdk-devargs=$(devargs 1 "$1" ovs)")
    OVS_SETUP=("ovs-vsctl ${config[*]}" "ovs-vsctl ${bridges[*]}"
        "ip addr add 10.99.0.1/24 dev br-phy; ip link set br-phy up (in ovs-vswitchd's namespace, IPv6 off there)"
        "ovs-appctl tnl/neigh/set br-phy 10.99.0.2 $REMOTE_MAC" "ovs-vsctl ${ports[*]}")
    ovsdb-tool create "$OVS_DIR/conf.db" "$OVS_SCHEMA" >"$OVS_DIR/setup.out" 2>&1
    "${OVS_ENV[@]}" ovsdb-server "$OVS_DIR/conf.db" --remote="punix:$OVS_DIR/db.sock" \
        --pidfile="$OVS_DIR/ovsdb-server.pid" --log-file="$OVS_DIR/ovsdb-server.log" \
        --unixctl="$OVS_DIR/ovsdb-server.ctl" --detach >>"$OVS_DIR/setup.out" 2>&1
    ovs_vsctl --no-wait init >>"$OVS_DIR/setup.out" 2>&1
    ovs_vsctl --no-wait "${config[@]}" >>"$OVS_DIR/setup.out" 2>&1
    # In $NS: its tap devices (br-phy's address) stay in there.
    "${OVS_ENV[@]}" ip netns exec "$NS" "$OVS_VSWITCHD" "unix:$OVS_DIR/db.sock" --pidfile="$OVS_DIR/ovs-vswitchd.pid" \
        --log-file="$OVS_DIR/ovs-vswitchd.log" --unixctl="$OVS_DIR/vswitchd.ctl" --detach >>"$OVS_DIR/setup.out" 2>&1
    if ! ovs_vsctl --timeout=120 "${bridges[@]}" >>"$OVS_DIR/setup.out" 2>&1; then
        echo "OVS bridges: $(grep -E 'ERR' "$OVS_DIR/ovs-vswitchd.log" | tail -3)" >&2
        return 1
    fi
    ip -n "$NS" addr replace 10.99.0.1/24 dev br-phy
    ip -n "$NS" link set br-phy up
    ovs_appctl tnl/neigh/set br-phy 10.99.0.2 "$REMOTE_MAC" >/dev/null
    sleep 1
    if ! ovs_vsctl --timeout=120 "${ports[@]}" >>"$OVS_DIR/setup.out" 2>&1; then
        echo "OVS ports: $(grep -E 'ERR' "$OVS_DIR/ovs-vswitchd.log" | tail -3)" >&2
        return 1
    fi
}

# ---- the check: captures read once, frames out counted and looked at ----
# tshark fields of the first frame of a capture out of the uplink (outer headers, VNI, inner
# MACs) and of the local port (inner MACs).
outer_fields() {
    local f=(-e eth.dst -e eth.src -e ip.src -e ip.dst -e ip.ttl -e udp.srcport -e udp.dstport -e udp.checksum)
    # (-c counts frames before -Y filters them: head instead.)
    echo "$(tshark -r "$1" -Y vxlan -T fields -E separator=' ' -E occurrence=f "${f[@]}" -e vxlan.vni 2>/dev/null | head -1)," \
        "inner $(tshark -r "$1" -Y vxlan -T fields -E separator=' ' -E occurrence=l -e eth.dst -e eth.src 2>/dev/null | head -1)"
}
frames_in() { tshark -r "$1" ${2:+-Y "$2"} 2>/dev/null | wc -l; }
# Frames out not among those sent: the inner frames of the VXLAN packets out of the uplink
# against A's, the frames out of the local port against B's (scapy takes the VXLAN header off;
# the uplink's other frames, ARP probes, are counted apart).
HEX='import sys
from scapy.utils import rdpcap
from scapy.layers.vxlan import VXLAN
for p in rdpcap(sys.argv[1]):
    if VXLAN in p or sys.argv[2:] != ["vxlan"]:
        print(bytes(p[VXLAN].payload if VXLAN in p else p).hex())'
inner_match() { # out.pcap sent.pcap [vxlan: only the VXLAN packets of out.pcap]
    comm -23 <("$PY" -c "$HEX" "$1" ${3:+"$3"} | sort) <("$PY" -c "$HEX" "$2" | sort) | wc -l
}
check() { # contender
    local c=$1 out0=$WORK/$1-p0.pcap out1=$WORK/$1-p1.pcap
    echo "   $c: $(frames_in "$out1" vxlan) of $MACS frames out of the uplink in VXLAN (encap; other frames there: $(frames_in "$out1" '!vxlan'), $(frames_in "$out1" arp) of them ARP), $(frames_in "$out0") of $MACS out of the local port (decap)"
    echo "   $c: uplink frame 1 (outer MAC dst src, IP src dst ttl, UDP sport dport csum, VNI, inner MAC dst src): $(outer_fields "$out1")"
    echo "   $c: UDP source ports of the first 8 VXLAN packets out of the uplink: $(tshark -r "$out1" -Y vxlan -T fields -E occurrence=f -e udp.srcport 2>/dev/null | head -8 | tr '\n' ' ')"
    echo "   $c: frames out not as sent: $(inner_match "$out1" "$WORK/a.pcap" vxlan) encapsulated, $(inner_match "$out0" "$WORK/b.pcap") decapsulated"
}

declare -A SERIES
RESULTS=()
measure() { # label pid thread-pattern tx-function
    local label=$1 pid=$2 tid c0=0 c1=0 t0 t1 n0 n1 mpps cpu=n/a
    sleep 2
    tid=$(busiest_thread "$pid" "$3")
    t0=$(date +%s.%N)
    [ -n "$tid" ] && c0=$(thread_ns "$pid" "$tid")
    n0=$($4)
    sleep "$SECS"
    t1=$(date +%s.%N)
    [ -n "$tid" ] && c1=$(thread_ns "$pid" "$tid")
    n1=$($4)
    mpps=$(awk -v a="$n0" -v b="$n1" -v t0="$t0" -v t1="$t1" 'BEGIN {printf "%.3f", (b - a) / (t1 - t0) / 1e6}')
    [ "$c1" -gt "$c0" ] && [ "$n1" -gt "$n0" ] && cpu=$(awk -v c=$((c1 - c0)) -v n=$((n1 - n0)) 'BEGIN {printf "%.2f", c / n}')
    SERIES[$label]+="$mpps/$cpu "
    printf '   %-12s %8s Mpps out %8s ns CPU/frame   (%s frames in %.2f s)\n' "$label" "$mpps" "$cpu" $((n1 - n0)) \
        "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
}

# The decap direction's capture first: switchyard learns the endpoint's MAC from it.
check_feed() {
    sleep 2
    inject "$WORK/benc.pcap" c1p
    inject "$WORK/a.pcap" c0p
    sleep 1
}
echo "== check: each capture sent once ($MACS frames each way), frames out written"
if sy_start check; then
    check_feed
    sy_ctl show stats | grep -A1 -E '^port (p0|tun0) ' | sed 's/^/   sy: /'
    sy_stop
    check sy
fi
if ovs_start check; then
    check_feed
    ovs_appctl dpctl/show -s | grep -E 'port [0-9]+: p[01]|(RX|TX) packets' | sed 's/^/   ovs: /' || true
    [ -n "${OVS_DEBUG:-}" ] && { ovs_appctl dpctl/dump-flows; ovs_appctl ovs/route/show; ovs_appctl tnl/neigh/show; grep -E 'WARN|ERR' "$OVS_DIR/ovs-vswitchd.log" | tail; }
    ovs_stop
    check ovs
fi

echo "== $ROUNDS rounds, $SECS s each, forwarding core $CORE"
for ((r = 1; r <= ROUNDS; r++)); do
    if sy_start run; then
        measure switchyard "$SY_PID" '' sy_tx
        sy_ctl show stats | grep -A1 -E '^port (p0|tun0) ' | sed 's/^/      /'
        sy_stop
    fi
    if [ "${DEFAULT:-1}" = 1 ] && sy_start run default; then
        measure sy-default "$SY_PID" '' sy_tx
        sy_ctl show stats | grep -A1 -E '^port (p0|tun0) ' | sed 's/^/      /'
        sy_stop
    fi
    if ovs_start run; then
        measure ovs-dpdk "$(cat "$OVS_DIR/ovs-vswitchd.pid")" '^pmd' ovs_tx
        ovs_appctl dpctl/show -s | grep -E 'port [0-9]+: p[01] |TX packets' | grep -A1 -E ': p[01] ' | grep TX | sed 's/^ */      /' || true
        ovs_appctl dpif-netdev/pmd-stats-show | grep -E 'packets received|avg processing cycles' | head -2 | sed 's/^ */      /' || true
        ovs_stop
    fi
done

median() { tr ' ' '\n' | grep -E '^[0-9.]+$' | sort -g | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "n/a"}'; }
echo
echo "== results: medians of $ROUNDS rounds ($SECS s each, $NCPU cores; $(uptime | sed 's/.*load/load/'))"
echo "   $HUGE_NOTE"
declare -A MPPS CPUNS
for l in switchyard sy-default ovs-dpdk; do
    [ -n "${SERIES[$l]:-}" ] || continue
    MPPS[$l]=$(tr ' ' '\n' <<<"${SERIES[$l]:-}" | cut -d/ -f1 | median)
    CPUNS[$l]=$(tr ' ' '\n' <<<"${SERIES[$l]:-}" | cut -d/ -f2 | median)
    printf '   %-12s %8s Mpps out %8s ns CPU/frame   rounds: %s\n' "$l" "${MPPS[$l]}" "${CPUNS[$l]}" "${SERIES[$l]:-}"
done
if [[ ${MPPS[switchyard]:-} =~ ^[0-9.]+$ && ${MPPS[ovs-dpdk]:-} =~ ^[0-9.]+$ ]]; then
    awk -v a="${MPPS[switchyard]}" -v b="${MPPS[ovs-dpdk]}" 'BEGIN {if (b > 0) printf "   switchyard / OVS-DPDK, wall-clock rate:  %.2f (goal >= 3)\n", a / b}'
fi
if [[ ${CPUNS[switchyard]:-} =~ ^[0-9.]+$ && ${CPUNS[ovs-dpdk]:-} =~ ^[0-9.]+$ ]]; then
    awk -v a="${CPUNS[switchyard]}" -v b="${CPUNS[ovs-dpdk]}" 'BEGIN {if (a > 0) printf "   switchyard / OVS-DPDK, rate per CPU-second: %.2f (goal >= 3)\n", b / a}'
fi
if [[ ${CPUNS[sy-default]:-} =~ ^[0-9.]+$ && ${CPUNS[ovs-dpdk]:-} =~ ^[0-9.]+$ ]]; then
    awk -v a="${CPUNS[sy-default]}" -v b="${CPUNS[ovs-dpdk]}" -v m="${MPPS[sy-default]}" -v o="${MPPS[ovs-dpdk]}" 'BEGIN {if (a > 0 && o > 0) printf "   switchyard without --busy-poll (run'"'"'s default; saturated: never idle) / OVS-DPDK: wall-clock %.2f, per CPU-second %.2f\n", m / o, b / a}'
fi
printf '   %s\n' "OVS-DPDK setup: ${OVS_SETUP[@]/#/; }"
