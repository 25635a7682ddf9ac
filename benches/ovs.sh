# shellcheck shell=bash
# A private Open vSwitch for the comparison benchmarks (pmd-compare.sh, vm2vm.sh): its database,
# socket, logs and pid files all in $OVS_DIR, nothing in the host's /var/run/openvswitch.
# Sourced; the includer sets OVS_DIR (an empty directory) and OVS_SCHEMA.

# ovs_up CONFIG CMD BRIDGE PORT...: creates the database and starts ovsdb-server, sets the
# Open_vSwitch columns of the array named CONFIG (`ovs-vsctl` arguments), starts ovs-vswitchd
# with the array named CMD (a command that detaches), adds the bridge of the array named BRIDGE,
# and checks that each PORT got an OpenFlow port number. On failure: returns 1 with the step
# and the last log lines in OVS_FAIL. Every step is bounded (120 s).
ovs_up() {
    local -n ovs_config=$1 ovs_cmd=$2 ovs_bridge=$3
    shift 3
    local env=(env OVS_RUNDIR="$OVS_DIR" OVS_LOGDIR="$OVS_DIR" OVS_DBDIR="$OVS_DIR")
    local vsctl=("${env[@]}" ovs-vsctl --db="unix:$OVS_DIR/db.sock")
    local out=$OVS_DIR/setup.out port
    OVS_FAIL=
    if ! ovsdb-tool create "$OVS_DIR/conf.db" "$OVS_SCHEMA" >"$out" 2>&1 ||
        ! "${env[@]}" ovsdb-server "$OVS_DIR/conf.db" --remote="punix:$OVS_DIR/db.sock" \
            --pidfile="$OVS_DIR/ovsdb-server.pid" --log-file="$OVS_DIR/ovsdb-server.log" \
            --unixctl="$OVS_DIR/ovsdb-server.ctl" --detach >>"$out" 2>&1 ||
        ! "${vsctl[@]}" --timeout=120 --no-wait init >>"$out" 2>&1 ||
        ! "${vsctl[@]}" --timeout=120 --no-wait "${ovs_config[@]}" >>"$out" 2>&1; then
        OVS_FAIL="ovsdb: $(tail -3 "$out")"
    elif ! timeout 120 "${env[@]}" "${ovs_cmd[@]}" >>"$out" 2>&1; then
        OVS_FAIL="ovs-vswitchd: $(grep -E 'ERR|EMER' "$OVS_DIR/ovs-vswitchd.log" | tail -3 || true)"
    elif ! "${vsctl[@]}" --timeout=120 "${ovs_bridge[@]}" >>"$out" 2>&1; then
        OVS_FAIL="bridge: $(grep -E 'ERR' "$OVS_DIR/ovs-vswitchd.log" | tail -3 || true)"
    else
        for port in "$@"; do
            if ! [[ $("${vsctl[@]}" --timeout=120 get interface "$port" ofport) =~ ^[1-9][0-9]*$ ]]; then
                OVS_FAIL="bridge: $port has no port number: $(grep -E 'ERR' "$OVS_DIR/ovs-vswitchd.log" | tail -3 || true)"
                break
            fi
        done
    fi
    [ -z "$OVS_FAIL" ]
}

# Process helpers the scripts that source this one share (OVS's daemons are stopped with them).
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
# stop_pid PID [SECONDS]: stops one process we started: SIGTERM, up to SECONDS (default 5),
# then SIGKILL.
stop_pid() {
    local pid=$1 tenths=$((${2:-5} * 10)) i
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for ((i = 0; i < tenths; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    alive "$pid" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}
