#!/usr/bin/env bash
# A short, bounded run of every fuzz target, on stable Rust and with nothing to install: fuzz/ is
# its own workspace (cargo-fuzz layout); its targets are built here the way `cargo fuzz build -s
# none` builds them (libfuzzer-sys links libFuzzer; rustc's SanitizerCoverage pass, which stable
# rustc runs through -Cpasses/-Cllvm-args, gives libFuzzer its coverage feedback), with debug
# assertions and overflow checks on, and a warning in the targets or the switchyard crates they
# test (dataplane, ports, control, cni; built here without the dpdk feature) fails the build
# (cargo caps the lints of registry dependencies). Each target then runs FUZZ_SECONDS (default
# 20) from its seeds (fuzz/seeds/<target>.txt, or the files of fuzz/seeds/<target>/), if any; a
# panic, a failed assertion, a leak or an input that takes over 10 s fails the script, and the
# input that did it is left under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-20}
host=$(rustc -vV | sed -n 's/^host: //p')
flags=(
  --cfg fuzzing
  -Dwarnings
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  -Cdebug-assertions
  -Coverflow-checks
)
echo "== fuzz: build (fuzz/target)"
# --target keeps RUSTFLAGS off build scripts and proc macros, which are not linked with libFuzzer.
RUSTFLAGS="${flags[*]}" cargo build --release --manifest-path fuzz/Cargo.toml \
  --target-dir fuzz/target --target "$host" --bins
bin=fuzz/target/$host/release

# Writes the inputs of fuzz/seeds/<target>.txt (its format is described in the file) into $2.
seed_corpus() {
  local n=0 buf="" line port dt hex
  while IFS= read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    read -r port dt hex _ <<<"$line"
    if [ -z "$port" ]; then
      if [ -n "$buf" ]; then
        printf "$buf" >"$2/seed-$n"
        n=$((n + 1))
        buf=""
      fi
      continue
    fi
    buf+=$(printf '\\x%02x\\x%02x\\x%02x' "$port" $((${#hex} / 2)) "$dt")$(sed 's/../\\x&/g' <<<"$hex")
  done <"$1"
  if [ -n "$buf" ]; then printf "$buf" >"$2/seed-$n"; fi
}

# Copies the files of fuzz/seeds/<target>/ into $2: a `.hex` file is written as the bytes its
# hex digits spell (white space and `#` comments ignored), any other file as it is.
seed_files() {
  local f hex
  for f in "$1"/*; do
    [ -f "$f" ] || continue
    case "$f" in
      *.hex)
        hex=$(sed 's/#.*//' "$f" | tr -d ' \t\n')
        printf "$(sed 's/../\\x&/g' <<<"$hex")" >"$2/$(basename "$f" .hex)"
        ;;
      *) cp "$f" "$2/" ;;
    esac
  done
}

targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -vx switchyard-fuzz)
mkdir -p fuzz/artifacts
for t in $targets; do
  corpus=$(mktemp -d)
  if [ -f "fuzz/seeds/$t.txt" ]; then seed_corpus "fuzz/seeds/$t.txt" "$corpus"; fi
  if [ -d "fuzz/seeds/$t" ]; then seed_files "fuzz/seeds/$t" "$corpus"; fi
  echo "== fuzz: $t for ${secs}s"
  if ! "$bin/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t-" "$corpus" >"$corpus.log" 2>&1; then
    tail -n 60 "$corpus.log"
    echo "== fuzz: $t FAILED; reproduce with: $bin/$t fuzz/artifacts/$t-<file above>"
    rm -rf "$corpus" "$corpus.log"
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+DONE|^Done' "$corpus.log" || true
  rm -rf "$corpus" "$corpus.log"
done
