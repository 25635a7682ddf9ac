#!/usr/bin/env bash
# The cost of `switchyard run --metrics`:
#  1. scrape: `run --switch FILE` with N ring ports on one bridge (no traffic); times SCRAPES
#     GETs of /metrics with curl (time_total: connect, render, transfer) and prints the median,
#     p90 and max, the size of one scrape and its number of samples;
#  2. forwarding: `run --switch FILE` with two pcap ports replaying benches/gen_pcaps.py's
#     captures forever into each other (the L2 pipeline, one worker on core CORE), and IDLE
#     idle ring ports on a second bridge (default 0; each scrape renders them all, but the
#     worker also polls each of their RX queues every poll, which then sets the rate), ROUNDS
#     windows of SECS seconds each way, interleaved: without scraping, then with a scrape every
#     EVERY seconds (default 0: back to back, as fast as curl goes, a worst case next to
#     Prometheus's one every 15-60 s; on a machine with few cores the loop's CPU competes with
#     the run), curl pinned off CORE. The rate is the
#     frames received by both ports per second, from the counters of scrapes at each window's
#     ends. It prints each window and the median rates and their ratio.
# It asserts nothing. Builds nothing: run `cargo build --release` first.
#
# usage: benches/metrics-scrape.sh   env: N=20000 SCRAPES=50 ROUNDS=3 SECS=3 EVERY=0 IDLE=0 CORE=(last)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard
N=${N:-20000}
SCRAPES=${SCRAPES:-50}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-3}
EVERY=${EVERY:-0}
IDLE=${IDLE:-0}
CORE=${CORE:-$(($(nproc) - 1))}
OTHERS=$(python3 -c "import os; print(','.join(str(c) for c in sorted(os.sched_getaffinity(0)) if c != $CORE) or '$CORE')")
ADDR=127.0.0.1:$((20000 + $$ % 20000))
TMP=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

start() { # FILE: starts run, waits (bounded) for /readyz
    "$BIN" run --switch "$1" --metrics "$ADDR" --socket "$TMP/ctl.sock" --cni-state "$TMP/cni" \
        --lcores "$CORE" 2>"$TMP/run.log" &
    PID=$!
    for ((i = 0; i < 600; i++)); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ADDR/readyz")" = 200 ]; then return; fi
        sleep 0.1
    done
    cat "$TMP/run.log" >&2
    echo "run did not become ready" >&2
    exit 1
}
stop_run() { kill "$PID"; wait "$PID" || true; PID=; }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# 1. scrape time with N ports
{
    echo "bridges:"
    echo "  - name: br0"
    echo "    ports:"
    for ((i = 0; i < N; i++)); do echo "      - {name: p$i, type: ring}"; done
} >"$TMP/big.yaml"
t0=$(date +%s.%N)
start "$TMP/big.yaml"
echo "== $N ring ports: ready after $(echo "$(date +%s.%N) - $t0" | bc) s"
curl -s "http://$ADDR/metrics" >"$TMP/scrape.txt"
echo "== one scrape: $(wc -c <"$TMP/scrape.txt") bytes, $(grep -vc '^#' "$TMP/scrape.txt") samples"
for ((i = 0; i < SCRAPES; i++)); do
    curl -s -o /dev/null -w '%{time_total}\n' "http://$ADDR/metrics"
done >"$TMP/times"
sort -g "$TMP/times" | awk -v n="$N" '{ a[NR] = $1 } END {
    printf "== scrape with %d ports, %d scrapes: median %.1f ms, p90 %.1f ms, max %.1f ms\n",
        n, NR, a[int((NR + 1) / 2)] * 1000, a[int(NR * 0.9 + 0.5)] * 1000, a[NR] * 1000 }'
stop_run

# 2. forwarding with and without scraping
python3 "$ROOT/benches/gen_pcaps.py" --macs 256 "$TMP/a.pcap" "$TMP/b.pcap"
cat >"$TMP/fwd.yaml" <<YAML
bridges:
  - name: br0
    ports:
      - {name: a, type: pcap, rx_pcap: $TMP/a.pcap, tx_pcap: /dev/null, infinite: true}
      - {name: b, type: pcap, rx_pcap: $TMP/b.pcap, tx_pcap: /dev/null, infinite: true}
YAML
if ((IDLE > 0)); then
    echo "  - name: br1" >>"$TMP/fwd.yaml"
    echo "    ports:" >>"$TMP/fwd.yaml"
    for ((i = 0; i < IDLE; i++)); do echo "      - {name: p$i, type: ring}"; done >>"$TMP/fwd.yaml"
fi
start "$TMP/fwd.yaml"
rx() { curl -s "http://$ADDR/metrics" | awk '/^switchyard_port_rx_packets_total/ { s += $2 } END { printf "%d", s }'; }
window() { # MODE: prints Mpps over SECS seconds
    local r0 r1 t0 t1 loop=
    r0=$(rx); t0=$(date +%s.%N)
    if [ "$1" = scraping ]; then
        # The loop runs off the worker's core (the run's own control threads are not pinned).
        (while :; do taskset -c "$OTHERS" curl -s -o /dev/null "http://$ADDR/metrics"; sleep "$EVERY"; done) &
        loop=$!
    fi
    sleep "$SECS"
    if [ -n "$loop" ]; then kill "$loop"; wait "$loop" 2>/dev/null || true; fi
    r1=$(rx); t1=$(date +%s.%N)
    echo "($r1 - $r0) / ($t1 - $t0) / 1000000" | bc -l
}
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in quiet scraping; do
        m=$(window $mode)
        printf "== round %d %-8s %.3f Mpps\n" "$r" "$mode" "$m"
        echo "$m" >>"$TMP/$mode"
    done
done
q=$(median <"$TMP/quiet")
s=$(median <"$TMP/scraping")
printf "== forwarding, median of %d windows: quiet %.3f Mpps, scraping (every %s s) %.3f Mpps, ratio %.3f\n" \
    "$ROUNDS" "$q" "$EVERY" "$s" "$(echo "$s / $q" | bc -l)"
