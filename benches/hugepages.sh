# Sourced by benches/pmd-compare.sh and benches/vm2vm.sh: hugepages for every DPDK contender,
# as a deployment has them, or --no-huge for all of them, printed as a fallback.
#
# huge_setup PAGES: when HUGEPAGES (env) is not 0, makes sure a 2 MiB hugetlbfs is mounted and
# PAGES 2 MiB pages are free: as root it mounts one on /dev/hugepages and raises nr_hugepages
# by what is missing, and huge_release (call it on exit) gives back exactly what it added.
# Sets HUGE=1 when every contender can run on hugepages, HUGE=0 (with the reason printed) when
# they all run with --no-huge; HUGE_NOTE says which, for the results.
HUGE=0
HUGE_NOTE=
HUGE_ADDED=0
HUGE_MOUNTED=
HUGE_SYSFS=/sys/kernel/mm/hugepages/hugepages-2048kB

huge_fallback() { # why
    HUGE=0
    HUGE_NOTE="no hugepages: every DPDK contender ran with --no-huge ($1)"
    echo "== FALLBACK: $HUGE_NOTE"
}

huge_setup() { # pages wanted free
    local want=$1 total free
    if [ "${HUGEPAGES:-1}" = 0 ]; then
        huge_fallback "HUGEPAGES=0"
        return 0
    fi
    if [ ! -d "$HUGE_SYSFS" ]; then
        huge_fallback "this kernel has no 2 MiB hugepages"
        return 0
    fi
    if ! awk '$3 == "hugetlbfs" && ($4 !~ /pagesize=/ || $4 ~ /pagesize=2M/) { f = 1 } END { exit !f }' /proc/mounts; then
        if [ "$(id -u)" != 0 ]; then
            huge_fallback "no 2 MiB hugetlbfs is mounted and mounting one needs root"
            return 0
        fi
        mkdir -p /dev/hugepages
        if ! mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages; then
            huge_fallback "cannot mount a hugetlbfs on /dev/hugepages"
            return 0
        fi
        HUGE_MOUNTED=/dev/hugepages
        echo "== hugepages: mounted a hugetlbfs on /dev/hugepages (unmounted at the end)"
    fi
    total=$(cat "$HUGE_SYSFS/nr_hugepages")
    free=$(cat "$HUGE_SYSFS/free_hugepages")
    if [ "$free" -lt "$want" ]; then
        if [ "$(id -u)" = 0 ]; then
            echo $((total + want - free)) >"$HUGE_SYSFS/nr_hugepages" 2>/dev/null || true
            HUGE_ADDED=$(($(cat "$HUGE_SYSFS/nr_hugepages") - total))
            echo "== hugepages: reserved $HUGE_ADDED more 2 MiB pages (given back at the end)"
            free=$(cat "$HUGE_SYSFS/free_hugepages")
        fi
    fi
    if [ "$free" -lt "$want" ]; then
        huge_fallback "$free free 2 MiB hugepages, fewer than the $want the contenders need"
        huge_release
        return 0
    fi
    HUGE=1
    HUGE_NOTE="hugepages: every DPDK contender on 2 MiB hugepages ($free free at the start)"
    echo "== $HUGE_NOTE"
}

huge_release() {
    if [ "$HUGE_ADDED" -gt 0 ]; then
        # Pages in use stay (the kernel frees only free ones); nobody's should be by now.
        echo $(($(cat "$HUGE_SYSFS/nr_hugepages") - HUGE_ADDED)) >"$HUGE_SYSFS/nr_hugepages" 2>/dev/null || true
        HUGE_ADDED=0
    fi
    if [ -n "$HUGE_MOUNTED" ]; then
        umount "$HUGE_MOUNTED" 2>/dev/null || true
        HUGE_MOUNTED=
    fi
}
