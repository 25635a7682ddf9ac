#!/usr/bin/env bash
# Time from a manifest write to the change being live in the running switch (every worker
# applied it), over SY_LAT_CHANGES changes (default 1000): prints median, p90, p99 and max,
# then one JSON line. The issue's target: 50 ms median, 200 ms p99.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p switchyard-control --bench reconcile_latency "$@"
