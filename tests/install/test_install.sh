#!/bin/sh
# Packaging checks: the shared library exports only vmm_* functions and has the right SONAME,
# and an installed libvmm can be used through pkg-config and through find_package(libvmm).
# usage: test_install.sh SOURCE_DIR BUILD_DIR
set -eu
S=$1
B=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

so=$B/lib/libvmm.so.0
bad=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -v '^vmm_' | grep -v '^LIBVMM_0$' || true)
if [ -n "$bad" ]; then echo "FAIL exports other than vmm_*: $bad"; exit 1; fi
internal=$(nm -D --defined-only "$so" | awk '{print $3}' | grep '^vmm__' || true)
if [ -n "$internal" ]; then echo "FAIL internal symbols exported: $internal"; exit 1; fi
n=$(nm -D --defined-only "$so" | awk '{print $3}' | grep -c '^vmm_')
echo "PASS $n exported symbols, all vmm_*"
soname=$(readelf -d "$so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = "libvmm.so.0" ] || { echo "FAIL SONAME is '$soname'"; exit 1; }
echo "PASS SONAME libvmm.so.0"

cmake --install "$B" --prefix "$tmp/prefix" >/dev/null
for f in include/libvmm/vmm.h include/libvmm/guest/hypercall.h lib/libvmm.so.0 lib/libvmm.a \
         lib/pkgconfig/libvmm.pc lib/cmake/libvmm/libvmmConfig.cmake; do
  ls "$tmp/prefix/$f" >/dev/null 2>&1 || ls "$tmp"/prefix/lib/*/"${f#lib/}" >/dev/null 2>&1 ||
    { echo "FAIL not installed: $f"; exit 1; }
done
echo "PASS installed headers, libraries, pkg-config file, CMake package"

pcdir=$(dirname "$(find "$tmp/prefix" -name libvmm.pc | head -1)")
libdir=$(dirname "$pcdir")
PKG_CONFIG_PATH=$pcdir cc -o "$tmp/c1" "$S/tests/install/consumer.c" $(PKG_CONFIG_PATH=$pcdir pkg-config --cflags --libs libvmm)
LD_LIBRARY_PATH=$libdir "$tmp/c1" | grep -q "^libvmm " || { echo "FAIL pkg-config consumer"; exit 1; }
echo "PASS consumer built with pkg-config runs"

cmake -S "$S/tests/install" -B "$tmp/cb" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cb" >/dev/null
LD_LIBRARY_PATH=$libdir "$tmp/cb/consumer" | grep -q "^libvmm " || { echo "FAIL CMake consumer"; exit 1; }
echo "PASS consumer built with find_package(libvmm) runs"

for f in "$S"/examples/*.c; do
  n=$(wc -l <"$f")
  [ "$n" -le 200 ] || { echo "FAIL $f has $n lines (limit 200)"; exit 1; }
  if grep -n '#include "' "$f" | grep -v 'libvmm' >/dev/null; then
    echo "FAIL $f includes a private header"; exit 1
  fi
done
echo "PASS examples are at most 200 lines and use only the public headers"
