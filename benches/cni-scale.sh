#!/usr/bin/env bash
# The CNI plugin at scale (issue 18), against a real `switchyard run`, release builds, the
# plugin run as Multus runs it (veth mode, no IPAM, a network namespace per pod):
#   - ADD and DEL latency with SY_CNI_PORTS (500) ports attached, SY_CNI_SAMPLES (200) of each;
#     goal: median <= 20 ms, p99 <= 50 ms;
#   - daemon restart with SY_CNI_RESTART_PORTS (1000) CNI ports, SY_CNI_RESTARTS (3) times:
#     from the spawn to every port restored and forwarding (a broadcast probe sent inside one
#     pod reaches every other pod, and one from another pod reaches it); goal: 2 s.
# SY_CNI_BENCH=latency|restart runs one part. Needs root and `ip`. Prints medians, p99s, the
# machine's state and one JSON line. See cni/benches/cni_scale.rs for the method.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== $0 $* ($(date -u +%FT%TZ))"
cargo build --release -p switchyard -p switchyard-cni
exec cargo bench -p switchyard-cni --bench cni_scale "$@"
