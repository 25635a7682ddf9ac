# Sourced by benches/pmd-compare.sh and benches/tunnel-compare.sh: the forwarding core of
# one-core runs and the forwarding thread's CPU time.
#
# NCPU, CORE (env CORE, default the last core) and MAIN_CORE (0, or 1 when CORE is 0: where a
# contender's other threads go).
# thread_ns PID TID: the CPU time (ns) thread TID of process PID has run so far (schedstat's
# first field). busiest_thread PID PATTERN: the thread of PID whose name matches PATTERN and
# that has run longest: the forwarding one. alive PID: running and not a zombie.
NCPU=$(nproc)
CORE=${CORE:-$((NCPU - 1))}
MAIN_CORE=0
[ "$CORE" = 0 ] && MAIN_CORE=$((NCPU > 1 ? 1 : 0))

thread_ns() { awk '{print $1}' "/proc/$1/task/$2/schedstat" 2>/dev/null || echo 0; }
busiest_thread() { # pid pattern
    local t best= most=-1 ns
    for t in /proc/"$1"/task/*; do
        [[ $(cat "$t/comm" 2>/dev/null) =~ $2 ]] || continue
        ns=$(awk '{print $1}' "$t/schedstat" 2>/dev/null) || continue
        if [ "${ns:-0}" -gt "$most" ]; then most=$ns best=${t##*/}; fi
    done
    echo "$best"
}
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
