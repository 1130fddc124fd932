#!/bin/sh
# Builds a busybox-static initramfs (cpio newc) for the Linux boot test.
#   make-initramfs.sh OUT.cpio
# Its /init mounts /proc, /sys and /dev, prints "@@LIBVMM-INIT@@ uptime=..." on the console,
# then powers off when the kernel command line has libvmm.poweroff, and otherwise runs a
# shell on the console (and powers off when the shell exits). Exit 77 without a static busybox.
set -eu
PROG=${0##*/}
OUT=$1
skip() { echo "$PROG: SKIP: $*" >&2; exit 77; }
BB=
for b in "${LIBVMM_BUSYBOX:-}" /bin/busybox /usr/bin/busybox; do
  [ -n "$b" ] && [ -x "$b" ] || continue
  if LC_ALL=C ldd "$b" 2>&1 | grep -q 'not a dynamic executable'; then BB=$b; break; fi
done
[ -n "$BB" ] || skip "no static busybox (apt-get install busybox-static)"
command -v cpio >/dev/null 2>&1 || skip "no cpio"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/sbin" "$tmp/proc" "$tmp/sys" "$tmp/dev" "$tmp/tmp" "$tmp/root" "$tmp/etc"
cp "$BB" "$tmp/bin/busybox"
ln -s busybox "$tmp/bin/sh"
cat >"$tmp/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "@@LIBVMM-INIT@@ uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"
if ! grep -qw libvmm.poweroff /proc/cmdline; then
  echo "@@LIBVMM-SHELL@@ type commands; exit powers off"
  setsid cttyhack sh
fi
poweroff -f
sleep 10
INIT
chmod 755 "$tmp/init"
(cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$OUT.new"
mv "$OUT.new" "$OUT"
