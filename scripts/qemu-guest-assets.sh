#!/usr/bin/env bash
# Builds the tiny guest that tests/qemu_guest.rs and cni/tests/vhostuser_guest.rs boot under
# QEMU against a switchyard vhost-user port:
#   - vmlinuz: Debian 12's current amd64 kernel, fetched with `apt-get download` and unpacked
#     with `dpkg-deb` (never installed on this machine);
#   - initramfs.cpio.gz: busybox-static, the virtio modules the guest needs (virtio_net and
#     what it depends on, unless built into the kernel) and an /init that brings eth0 up with a
#     static address, pings the host side and prints "SWITCHYARD-GUEST: PASS" or
#     "SWITCHYARD-GUEST: FAIL" on the serial console, then powers off.
#
# The guest's addresses come from the kernel command line (see the /init below), so the same
# assets serve every test topology.
#
# Idempotent: does nothing when the assets are up to date (same kernel package, same /init).
# As root it installs the Debian packages it needs when missing (qemu-system-x86,
# cpio; busybox-static is downloaded, not installed). Prints the cache directory on its last line.
#
# Cache: $SWITCHYARD_QEMU_CACHE, else /var/cache/switchyard-qemu as root, else
# ${XDG_CACHE_HOME:-~/.cache}/switchyard-qemu. Needs about 70 MB to download (the kernel
# package, deleted after use) and leaves about 20 MB in the cache.
#
# Environment:
#   SWITCHYARD_QEMU_CACHE       the cache directory (see above)
#   SWITCHYARD_QEMU_KERNEL_PKG  the kernel package (default: what linux-image-amd64 depends on)
#   SWITCHYARD_QEMU_NO_INSTALL  set to 1 to never install packages
set -euo pipefail

say() { echo "== qemu-guest-assets: $*"; }
die() {
  echo "qemu-guest-assets: error: $*" >&2
  exit 1
}

if [ -n "${SWITCHYARD_QEMU_CACHE:-}" ]; then
  cache=$SWITCHYARD_QEMU_CACHE
elif [ "$(id -u)" = 0 ]; then
  cache=/var/cache/switchyard-qemu
else
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/switchyard-qemu
fi

# --- host packages -------------------------------------------------------------------------
# (busybox-static is not installed: it would replace a machine's busybox; see below.)
need_pkgs=(qemu-system-x86 cpio)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && [ "${SWITCHYARD_QEMU_NO_INSTALL:-0}" != 1 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    die "missing packages: ${missing[*]} (run as root to install them)"
  fi
fi
# A static busybox for the guest: the machine's own when it is static, else the one of Debian's
# busybox-static package, downloaded and unpacked into the cache (not installed: the package
# conflicts with busybox, which the machine may need).
is_static() {
  [ -x "$1" ] && { file -L "$1" 2>/dev/null | grep -q "statically linked" ||
    ldd "$1" 2>&1 | grep -q "not a dynamic executable"; }
}
busybox=/bin/busybox
if ! is_static "$busybox"; then
  busybox=$cache/busybox/bin/busybox
  if ! is_static "$busybox"; then
    say "downloading busybox-static with apt-get download (not installing it)"
    mkdir -p "$cache"
    bb=$(mktemp -d "$cache/bb.XXXXXX")
    if ! (cd "$bb" && apt-get download -q -o APT::Sandbox::User=root busybox-static) >/dev/null 2>&1; then
      [ "$(id -u)" = 0 ] && apt-get update -qq
      (cd "$bb" && apt-get download -q -o APT::Sandbox::User=root busybox-static) >/dev/null ||
        { rm -rf "$bb"; die "cannot download busybox-static"; }
    fi
    rm -rf "$cache/busybox"
    dpkg-deb -x "$bb"/busybox-static_*.deb "$cache/busybox"
    rm -rf "$bb"
    is_static "$busybox" || die "$busybox from busybox-static is not a static executable"
  fi
fi

# --- the guest's /init ---------------------------------------------------------------------
# Kernel command line parameters it reads (all optional):
#   sy.ip=ADDR/LEN     its address on eth0            (default 198.51.100.2/24)
#   sy.peer=ADDR       the address it pings           (default 198.51.100.1)
#   sy.count=N         small echo replies wanted per round (default 3); then 20 full-size ones
#   sy.deadline=S      seconds a round may take       (default 30)
#   sy.rounds=N        rounds of pings (default 1); between two rounds it prints
#                      "SWITCHYARD-GUEST: waiting" and reads one line from the console, so the
#                      host decides when the next round starts (at most 300 s)
#   sy.between=rebind  between rounds, instead of waiting: unbind eth0's virtio device from
#                      virtio_net and bind it again (the device is reset and set up anew on
#                      the same vhost-user connection, as when a guest reboots)
#   sy.run=HEX         instead of the pings: run this shell script (hex-encoded, as `xxd -p`
#                      writes it) once eth0 is up; the verdict is its exit status
# Markers (one line each, on the serial console):
#   SWITCHYARD-GUEST: up          eth0 is up and addressed
#   SWITCHYARD-GUEST: round R PASS / round R FAIL
#   SWITCHYARD-GUEST: PASS / FAIL  the verdict over every round, just before powering off
read -r -d '' init_script <<'INIT' || true
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mark() { echo "SWITCHYARD-GUEST: $*"; }
finish() {
  mark "$1"
  sync
  poweroff -f
  sleep 5
  echo o >/proc/sysrq-trigger
}

ip_cidr=198.51.100.2/24 peer=198.51.100.1 count=3 deadline=30 rounds=1 between=wait run=
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    sy.ip=*) ip_cidr=${arg#sy.ip=} ;;
    sy.peer=*) peer=${arg#sy.peer=} ;;
    sy.count=*) count=${arg#sy.count=} ;;
    sy.deadline=*) deadline=${arg#sy.deadline=} ;;
    sy.rounds=*) rounds=${arg#sy.rounds=} ;;
    sy.between=*) between=${arg#sy.between=} ;;
    sy.run=*) run=${arg#sy.run=} ;;
  esac
done

for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m" || mark "insmod $m failed"
done

eth0_up() {
  i=0
  while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
      ls /sys/class/net
      finish "FAIL (no eth0)"
    fi
    sleep 0.1
  done
  ip link set eth0 up
  ip addr add "$ip_cidr" dev eth0
  mark "up ($(cat /sys/class/net/eth0/address) $ip_cidr)"
}
ip link set lo up
eth0_up

if [ -n "$run" ]; then
  echo "$run" | xxd -r -p >/run.sh
  if sh /run.sh; then verdict=PASS; else verdict=FAIL; fi
  cat /proc/net/dev
  finish "$verdict"
fi

verdict=PASS
r=1
while [ $r -le $rounds ]; do
  # Small echoes first (the first one waits for ARP), then full-size frames (1514 bytes on
  # the wire each way) in a quick series.
  if ping -c "$count" -i 0.2 -w "$deadline" "$peer" &&
    ping -c 20 -i 0.02 -s 1472 -w "$deadline" "$peer"; then
    mark "round $r PASS"
  else
    mark "round $r FAIL"
    verdict=FAIL
  fi
  if [ $r -lt $rounds ] && [ "$between" = rebind ]; then
    dev=$(basename "$(readlink /sys/class/net/eth0/device)")
    mark "rebinding $dev"
    echo "$dev" >/sys/bus/virtio/drivers/virtio_net/unbind
    sleep 0.5
    echo "$dev" >/sys/bus/virtio/drivers/virtio_net/bind
    eth0_up
  elif [ $r -lt $rounds ]; then
    mark "waiting"
    read -r -t 300 line || mark "no go from the host"
  fi
  r=$((r + 1))
done
cat /proc/net/dev
finish "$verdict"
INIT

# --- the kernel package --------------------------------------------------------------------
pkg=${SWITCHYARD_QEMU_KERNEL_PKG:-}
if [ -z "$pkg" ]; then
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
  if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
      sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
  fi
fi
if [ -z "$pkg" ]; then
  # No package lists (offline, not root): keep whatever is cached.
  if [ -s "$cache/vmlinuz" ] && [ -s "$cache/initramfs.cpio.gz" ]; then
    say "cannot tell the current kernel package; keeping the cached assets"
    echo "$cache"
    exit 0
  fi
  die "cannot find Debian's kernel package (apt-cache depends linux-image-amd64 says nothing)"
fi
pkgver=$(apt-cache policy "$pkg" 2>/dev/null | sed -n 's/^ *Candidate: //p')
[ -n "$pkgver" ] && [ "$pkgver" != "(none)" ] || pkgver=unknown

kstamp="$pkg $pkgver"
stamp="$kstamp init=$(printf '%s' "$init_script" | sha256sum | cut -c1-16) \
busybox=$(sha256sum "$busybox" | cut -c1-16)"
if [ -s "$cache/vmlinuz" ] && [ -s "$cache/initramfs.cpio.gz" ] &&
  [ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ]; then
  say "up to date in $cache ($pkg $pkgver)"
  echo "$cache"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- the kernel and its modules (kept in $cache/kernel, so that a new /init needs no download)
kdir="$cache/kernel"
if [ "$(cat "$kdir/stamp" 2>/dev/null)" != "$kstamp" ]; then
  say "downloading $pkg ($pkgver) with apt-get download (not installing it)"
  (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$pkg") >/dev/null
  deb=$(ls "$work"/*.deb)
  say "got $(basename "$deb") ($(du -h "$deb" | cut -f1))"

  # The package ships no modules.dep (Debian's postinst runs depmod), so the dependencies
  # come from each module's own .modinfo section ("depends=a,b"), one extraction pass per
  # level.
  say "reading the module list"
  dpkg-deb --fsys-tarfile "$deb" |
    tar -x -C "$work" --wildcards --no-wildcards-match-slash \
      './lib/modules/*/modules.order' './lib/modules/*/modules.builtin' './boot/vmlinuz-*'
  kver=$(ls "$work/lib/modules")
  [ "$(echo "$kver" | wc -l)" = 1 ] || die "expected one kernel in the package, found: $kver"
  moddir="$work/lib/modules/$kver"

  norm() { echo "${1//-/_}"; }
  builtin() { sed 's@.*/@@; s@\.ko.*@@; s@-@_@g' "$moddir/modules.builtin" | grep -qx "$(norm "$1")"; }
  path_of() { # the module's path under $moddir, from modules.order ("kernel/.../name.ko")
    local want p
    want=$(norm "$1")
    while read -r p; do
      [ "$(norm "$(basename "${p%%.ko*}")")" = "$want" ] && {
        echo "$p"
        return
      }
    done <"$moddir/modules.order"
  }
  deps_of() { # the depends= of an extracted module
    tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | tr ',' ' '
  }

  declare -A seen=() deps=()
  pending=(virtio virtio_ring virtio_pci virtio_net)
  while ((${#pending[@]})); do
    fetch=()
    for m in "${pending[@]}"; do
      m=$(norm "$m")
      [ -n "${seen[$m]:-}" ] && continue
      seen[$m]=builtin
      if builtin "$m"; then
        say "$m is built into $kver"
        continue
      fi
      p=$(path_of "$m")
      [ -n "$p" ] || die "$m is neither built in nor a module of $kver"
      seen[$m]=$p
      fetch+=("./lib/modules/$kver/$p*")
    done
    pending=()
    ((${#fetch[@]})) || break
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work" --wildcards "${fetch[@]}"
    for f in "${fetch[@]}"; do
      for file in "$work"/${f#./}; do
        m=$(norm "$(basename "${file%%.ko*}")")
        case "$file" in
          *.ko.xz) xz -dc "$file" >"$moddir/$m.raw" ;;
          *.ko.zst) zstd -qdc "$file" >"$moddir/$m.raw" ;;
          *.ko.gz) gzip -dc "$file" >"$moddir/$m.raw" ;;
          *) cp "$file" "$moddir/$m.raw" ;;
        esac
        deps[$m]=$(deps_of "$moddir/$m.raw")
        for d in ${deps[$m]}; do pending+=("$d"); done
      done
    done
  done

  # Load order: dependencies first (depth-first over the depends= lists).
  order=()
  declare -A placed=()
  place() {
    local m=$1 d
    [ -n "${placed[$m]:-}" ] && return
    placed[$m]=1
    [ "${seen[$m]}" = builtin ] && return
    for d in ${deps[$m]}; do place "$(norm "$d")"; done
    order+=("$m")
  }
  for m in "${!seen[@]}"; do place "$m"; done
  say "modules to load, in order: ${order[*]:-none}"

  knew="$work/kernel"
  mkdir -p "$knew/modules"
  cp "$work"/boot/vmlinuz-* "$knew/vmlinuz"
  : >"$knew/load-order"
  for m in "${order[@]}"; do
    cp "$moddir/$m.raw" "$knew/modules/$m.ko"
    echo "$m.ko" >>"$knew/load-order"
  done
  echo "$kver" >"$knew/release"
  echo "$kstamp" >"$knew/stamp"
  rm -rf "$kdir"
  mv "$knew" "$kdir"
  rm -f "$deb"
else
  say "kernel $pkg ($pkgver) already unpacked in $kdir"
fi
kver=$(cat "$kdir/release")

# --- the initramfs ---------------------------------------------------------------------------
root="$work/root"
mkdir -p "$root"/{bin,dev,proc,sys,lib/modules}
cp "$busybox" "$root/bin/busybox"
cp "$kdir"/modules/*.ko "$root/lib/modules/" 2>/dev/null || true
cp "$kdir/load-order" "$root/lib/modules/load-order"
printf '%s\n' "$init_script" >"$root/init"
chmod 755 "$root/init"

say "packing the initramfs"
(cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet -R 0:0) |
  gzip -9n >"$work/initramfs.cpio.gz"

cp "$kdir/vmlinuz" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$cache/vmlinuz"
mv -f "$work/initramfs.cpio.gz" "$cache/initramfs.cpio.gz"
echo "$kver" >"$cache/kernel-release"
echo "$stamp" >"$cache/stamp"
say "built $cache/vmlinuz ($(du -h "$cache/vmlinuz" | cut -f1)) and $cache/initramfs.cpio.gz" \
  "($(du -h "$cache/initramfs.cpio.gz" | cut -f1)) for $kver"
echo "$cache"
