#!/bin/sh
# Puts what the Linux boot test needs into OUTDIR: vmlinuz (a link to Debian's kernel in the
# cache, see fetch-kernel.sh) and initramfs.cpio (busybox-static, see make-initramfs.sh).
# Exit 77 (skip) with the reason when either cannot be had.
set -u
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
rm -f "$OUT/vmlinuz" "$OUT/initramfs.cpio"
k=$("$HERE/fetch-kernel.sh") || exit $?
ln -s "$k" "$OUT/vmlinuz"
"$HERE/make-initramfs.sh" "$OUT/initramfs.cpio" || exit $?
echo "linux boot assets: $k ($(wc -c <"$k") bytes), initramfs $(wc -c <"$OUT/initramfs.cpio") bytes"
