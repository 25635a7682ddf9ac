#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine (as root): installs the system packages
# it needs when they are missing, then builds everything and runs every test. Arguments go to
# the test runner (e.g. a nextest filter: scripts/test.sh -E 'test(tap)').
#
# Tests that need root, DPDK, hugepages, TAP interfaces or QEMU skip where the machine lacks
# them, each through testkit (testkit/src/lib.rs): the skip is appended to $SWITCHYARD_SKIP_LOG
# (a fresh file each run) and every skip is summarised at the end, before nextest's closing
# "Summary" line, which is printed again as the very last line. The exit status is nextest's.
#
# Strict mode (CI=true, as CI sets it, or SWITCHYARD_STRICT_SKIPS=1): a skip that
# .ci/expected-skips does not list fails its test, and a failed build of the QEMU guest fails
# the run. As root the script gives the tests what CI has: a hugetlbfs on /dev/hugepages and
# at least $SWITCHYARD_HUGEPAGES (default 512; 0: leave hugepages alone) free 2 MiB hugepages,
# reserved for the machine (they stay reserved), and QEMU with the guest of tests/qemu_guest.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

strict=0
if [ "${CI:-}" = true ] || [ "${SWITCHYARD_STRICT_SKIPS:-0}" = 1 ]; then
  strict=1
  export SWITCHYARD_STRICT_SKIPS=1
  echo "== strict skips: a skip not listed in .ci/expected-skips fails its test"
fi
SWITCHYARD_SKIP_LOG=$(mktemp "${TMPDIR:-/tmp}/switchyard-skips.XXXXXX")
export SWITCHYARD_SKIP_LOG

# Hugepages as CI has them: a mounted hugetlbfs and enough free 2 MiB pages.
hugepages() {
  local want=${SWITCHYARD_HUGEPAGES:-512} dir=/sys/kernel/mm/hugepages/hugepages-2048kB total free
  [ "$want" != 0 ] || return 0
  if ! awk '$3 == "hugetlbfs" { found = 1 } END { exit !found }' /proc/mounts; then
    mkdir -p /dev/hugepages
    if mount -t hugetlbfs nodev /dev/hugepages; then
      echo "== hugepages: mounted a hugetlbfs on /dev/hugepages"
    else
      echo "== hugepages: cannot mount a hugetlbfs on /dev/hugepages"
    fi
  fi
  if [ ! -d "$dir" ]; then
    echo "== hugepages: this kernel has no 2 MiB hugepages"
    return 0
  fi
  total=$(cat "$dir/nr_hugepages")
  free=$(cat "$dir/free_hugepages")
  if [ "$free" -lt "$want" ]; then
    echo $((total + want - free)) >"$dir/nr_hugepages" || true
    echo "== hugepages: reserved $(($(cat "$dir/nr_hugepages") - total)) more 2 MiB hugepages" \
      "(asked for $((want - free)); they stay reserved)"
  fi
  echo "== hugepages: $(cat "$dir/free_hugepages") free 2 MiB hugepages"
}

if [ "$(id -u)" = 0 ]; then
  hugepages
fi

# tests/qemu_guest.rs and cni/tests/vhostuser_guest.rs boot a real QEMU guest on a vhost-user
# port: as root, install QEMU and build its guest (a Debian kernel downloaded, not installed,
# and a busybox initramfs; cached). Without them the tests skip (which strict mode refuses). SWITCHYARD_QEMU_TEST=0 leaves them out.
if [ "$(id -u)" = 0 ] && [ "${SWITCHYARD_QEMU_TEST:-1}" != 0 ]; then
  echo "== QEMU guest for tests/qemu_guest.rs and cni/tests/vhostuser_guest.rs"
  if ! timeout 900 scripts/qemu-guest-assets.sh; then
    if [ "$strict" = 1 ]; then
      echo "== error: no QEMU guest (scripts/qemu-guest-assets.sh failed); in strict mode this fails the run" >&2
      exit 1
    fi
    echo "== no QEMU guest (scripts/qemu-guest-assets.sh failed): the QEMU guest tests will skip"
  fi
fi

echo "== build"
cargo build --workspace --all-targets "${FEATURES[@]}"
echo "== tests (skips logged to $SWITCHYARD_SKIP_LOG)"
out=$(mktemp "${TMPDIR:-/tmp}/switchyard-tests.XXXXXX")
set +e
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace "${FEATURES[@]}" --no-fail-fast "$@" 2>&1 | tee "$out"
else
  cargo test --workspace "${FEATURES[@]}" --no-fail-fast "$@" 2>&1 | tee "$out"
fi
status=${PIPESTATUS[0]}
set -e
cargo run -q -p switchyard-testkit --bin skip-summary -- "$SWITCHYARD_SKIP_LOG" ||
  echo "== skips: cannot summarise $SWITCHYARD_SKIP_LOG"
# The runner's closing line last, where CI reads it.
grep -E '^ *Summary \[' "$out" | tail -n 1 || true
rm -f "$out"
exit "$status"
