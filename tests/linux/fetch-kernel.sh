#!/bin/sh
# Prints the path of Debian's current amd64 kernel (a bzImage), downloading it once.
#
# The kernel comes from `apt-get download` of linux-image-amd64 (and the real
# linux-image-<abi>-amd64 it depends on), unpacked with `dpkg-deb -x`; nothing is installed.
# It shares the cache of tests/nested/run-in-qemu.sh: when that harness already holds a kernel,
# that one is used. Exit status 77 (skip) with the reason on stderr when no kernel can be had.
#   LIBVMM_LINUX_KERNEL   use this file instead
#   LIBVMM_NESTED_CACHE   cache dir (default ${XDG_CACHE_HOME:-$HOME/.cache}/libvmm-nested)
set -eu
PROG=${0##*/}
skip() { echo "$PROG: SKIP: $*" >&2; exit 77; }

if [ -n "${LIBVMM_LINUX_KERNEL:-}" ]; then
  [ -f "$LIBVMM_LINUX_KERNEL" ] || skip "LIBVMM_LINUX_KERNEL=$LIBVMM_LINUX_KERNEL is not a file"
  echo "$LIBVMM_LINUX_KERNEL"
  exit 0
fi
CACHE=${LIBVMM_NESTED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/libvmm-nested}
mkdir -p "$CACHE" 2>/dev/null || skip "cannot create the cache dir $CACHE"
exec 9>"$CACHE/.lock"
flock 9 2>/dev/null || true

# The nested harness's kernel (same package, same cache).
if [ -f "$CACHE/current-kernel" ] && [ -f "$CACHE/$(cat "$CACHE/current-kernel")/vmlinuz" ]; then
  echo "$CACHE/$(cat "$CACHE/current-kernel")/vmlinuz"
  exit 0
fi
if [ -f "$CACHE/boot-kernel/current" ] && [ -f "$CACHE/boot-kernel/$(cat "$CACHE/boot-kernel/current")" ]; then
  echo "$CACHE/boot-kernel/$(cat "$CACHE/boot-kernel/current")"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || skip "no cached kernel in $CACHE and no apt-get"
command -v dpkg-deb >/dev/null 2>&1 || skip "no dpkg-deb to unpack the kernel package"
tmp=$(mktemp -d "$CACHE/.boot.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
download() { # PKG into $tmp, with one apt-get update if that fails and we are root
  (cd "$tmp" && apt-get download "$1" >/dev/null 2>&1) && return 0
  [ "$(id -u)" = 0 ] || return 1
  apt-get update -qq >/dev/null 2>&1 || true
  (cd "$tmp" && apt-get download "$1" >/dev/null 2>&1)
}
echo "$PROG: downloading linux-image-amd64 (first run only) ..." >&2
download linux-image-amd64 || skip "cannot download linux-image-amd64 (no network, nothing cached)"
meta=$(ls "$tmp"/linux-image-amd64_*.deb)
real=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -n1)
[ -n "$real" ] || skip "linux-image-amd64 names no kernel package"
download "$real" || skip "cannot download $real"
deb=$(ls "$tmp"/"$real"_*.deb)
dpkg-deb -x "$deb" "$tmp/x"
vmlinuz=$(ls "$tmp"/x/boot/vmlinuz-* | head -n1)
[ -f "$vmlinuz" ] || skip "$real has no /boot/vmlinuz-*"
mkdir -p "$CACHE/boot-kernel"
name=${vmlinuz##*/}
cp "$vmlinuz" "$CACHE/boot-kernel/$name.new" && mv "$CACHE/boot-kernel/$name.new" "$CACHE/boot-kernel/$name"
echo "$name" >"$CACHE/boot-kernel/current"
echo "$CACHE/boot-kernel/$name"
