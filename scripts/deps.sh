#!/bin/sh
# Installs the Debian packages libvmm needs to build, test and document itself.
# Only missing packages are installed; needs root (or sudo) the first time.
set -eu
PKGS="build-essential cmake pkg-config libzydis-dev libuv1-dev libcjson-dev libcmocka-dev
doxygen graphviz qemu-system-x86 busybox-static cpio xz-utils
zlib1g-dev liblzma-dev libzstd-dev liblz4-dev clang libxxhash-dev qemu-user libunicorn-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing:$missing"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq $missing
