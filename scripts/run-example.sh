#!/usr/bin/env bash
# Runs switchyard doing its main job on the example: the bridge that the example cluster state
# (examples/state) gives node worker-1, with frames replayed through the real pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release "${FEATURES[@]}"
sy=target/release/switchyard
echo "== switchyard plan --state examples/state --node worker-1"
"$sy" plan --state examples/state --node worker-1
out=$(mktemp -d /tmp/switchyard-example.XXXXXX)
echo "== switchyard replay examples/replay/scenario.yaml --out $out --expect examples/replay/expected --trace"
"$sy" replay examples/replay/scenario.yaml --out "$out" --expect examples/replay/expected --trace
echo "== output matches examples/replay/expected; counters in $out/stats.json"
