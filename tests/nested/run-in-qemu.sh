#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# run-in-qemu.sh - run a host executable inside a throw-away Linux guest that
# has a real /dev/kvm, even on hosts without KVM.
#
# QEMU's TCG (pure software emulation) emulates AMD SVM, so Debian's own
# kernel booted under `qemu-system-x86_64 -accel tcg -cpu max` can load
# kvm_amd and expose /dev/kvm.  The guest root file system is an initramfs
# built on the fly: busybox + the kvm modules (cached) + the payload (CMD,
# --file files, shared libraries from ldd).
#
# Usage: run-in-qemu.sh [OPTIONS] -- CMD [ARGS...]
# See `run-in-qemu.sh --help` and README.md in this directory.
#
# Exit status: CMD's exit status; 77 if /dev/kvm (or QEMU, or the kernel) could
# not be made available (skip); 124 if the timeout expired; 125 on a harness
# error (bad usage, guest died without reporting a status).

set -euo pipefail

PROG=${0##*/}
EX_SKIP=77
EX_TIMEOUT=124
EX_HARNESS=125

# ------------------------------------------------------------------ options
TIMEOUT=${LIBVMM_NESTED_TIMEOUT:-300}
MEM=${LIBVMM_NESTED_MEM:-1024}
SMP=${LIBVMM_NESTED_SMP:-1}
CPU=${LIBVMM_NESTED_CPU:-max}
KVM_AMD_PARAMS=${LIBVMM_NESTED_KVM_AMD_PARAMS:-}
KERNEL_PKG=${LIBVMM_NESTED_KERNEL_PKG:-linux-image-amd64}
CACHE=${LIBVMM_NESTED_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/libvmm-nested}
QEMU=${LIBVMM_NESTED_QEMU:-qemu-system-x86_64}
EXTRA_APPEND=${LIBVMM_NESTED_APPEND:-}
VERBOSE=${LIBVMM_NESTED_VERBOSE:-0}
SPLIT_STDERR=0
REFRESH=0
KEEP=0
FILES=()
ENVS=()

usage() {
	cat <<EOF
Usage: $PROG [OPTIONS] -- CMD [ARGS...]

Boot a Linux guest under QEMU/TCG with emulated AMD SVM, load kvm + kvm_amd,
and run CMD (a host executable, copied to the same absolute path) inside it.
CMD's stdout+stderr are passed to this script's stdout; the script exits with
CMD's exit status (77 = /dev/kvm unavailable, 124 = timeout, 125 = harness
error).

Options:
  --timeout SECS      kill the guest after SECS seconds (default $TIMEOUT)
  --mem MB            guest memory (default $MEM)
  --smp N             guest vCPUs (default $SMP)
  --cpu MODEL         QEMU -cpu model, must have svm (default $CPU)
  --file HOSTPATH     copy a file or directory to the same absolute path in the
                      guest (repeatable); shared libraries of ELF files are
                      copied too
  --env NAME=VALUE    set an environment variable for CMD (repeatable)
  --kvm-amd-params P  kvm_amd module parameters, e.g. "npt=0 nested=0"
  --split-stderr      send CMD's stderr to this script's stderr instead of
                      merging it into stdout
  --refresh           re-download the kernel package (needs the network)
  --keep              keep the temporary directory (initramfs, console log)
  -v, --verbose       stream the guest console (kernel log) to stderr and
                      print timings
  -h, --help          this help

Environment: LIBVMM_NESTED_CACHE (cache dir, default
\${XDG_CACHE_HOME:-\$HOME/.cache}/libvmm-nested), LIBVMM_NESTED_KERNEL_PKG
(default linux-image-amd64), LIBVMM_NESTED_QEMU, LIBVMM_NESTED_APPEND (extra
kernel command line), LIBVMM_NESTED_{TIMEOUT,MEM,SMP,CPU,KVM_AMD_PARAMS,VERBOSE}.
EOF
}

die() { echo "$PROG: error: $*" >&2; exit $EX_HARNESS; }
skip() { echo "$PROG: SKIP: $*" >&2; exit $EX_SKIP; }
log() { if [ "$VERBOSE" != 0 ]; then echo "$PROG: $*" >&2; fi; }
need_arg() { [ $# -ge 2 ] || die "option $1 needs an argument"; }

while [ $# -gt 0 ]; do
	case $1 in
	--timeout) need_arg "$@"; TIMEOUT=$2; shift 2 ;;
	--timeout=*) TIMEOUT=${1#*=}; shift ;;
	--mem) need_arg "$@"; MEM=$2; shift 2 ;;
	--mem=*) MEM=${1#*=}; shift ;;
	--smp) need_arg "$@"; SMP=$2; shift 2 ;;
	--smp=*) SMP=${1#*=}; shift ;;
	--cpu) need_arg "$@"; CPU=$2; shift 2 ;;
	--cpu=*) CPU=${1#*=}; shift ;;
	--file) need_arg "$@"; FILES+=("$2"); shift 2 ;;
	--file=*) FILES+=("${1#*=}"); shift ;;
	--env) need_arg "$@"; ENVS+=("$2"); shift 2 ;;
	--env=*) ENVS+=("${1#*=}"); shift ;;
	--kvm-amd-params) need_arg "$@"; KVM_AMD_PARAMS=$2; shift 2 ;;
	--kvm-amd-params=*) KVM_AMD_PARAMS=${1#*=}; shift ;;
	--split-stderr) SPLIT_STDERR=1; shift ;;
	--refresh) REFRESH=1; shift ;;
	--keep) KEEP=1; shift ;;
	-v|--verbose) VERBOSE=1; shift ;;
	-h|--help) usage; exit 0 ;;
	--) shift; break ;;
	*) echo "$PROG: unknown option '$1'" >&2; usage >&2; exit $EX_HARNESS ;;
	esac
done
[ $# -ge 1 ] || { usage >&2; exit $EX_HARNESS; }
case $TIMEOUT in ''|*[!0-9]*) die "--timeout wants whole seconds" ;; esac
case $MEM in ''|*[!0-9]*) die "--mem wants MB" ;; esac
case $SMP in ''|*[!0-9]*) die "--smp wants a number" ;; esac
for e in ${ENVS[@]+"${ENVS[@]}"}; do
	case $e in [A-Za-z_]*=*) ;; *) die "--env wants NAME=VALUE, got '$e'" ;; esac
done

T_START=$(date +%s.%N)
elapsed() { awk -v a="$T_START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

# ------------------------------------------------------------------ host tools
command -v "$QEMU" >/dev/null 2>&1 ||
	skip "$QEMU not found (apt-get install qemu-system-x86)"
for t in cpio timeout flock; do
	command -v $t >/dev/null 2>&1 || skip "'$t' not found on the host"
done

mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
CACHE=$(cd "$CACHE" && pwd)

# All cache updates happen under this lock, so parallel runs are safe.
exec 9>"$CACHE/.lock"
flock 9

apt_download() { # PKG... into the current directory
	local out
	if out=$(apt-get download "$@" 2>&1); then return 0; fi
	if [ "$(id -u)" = 0 ]; then
		log "apt-get download failed, running apt-get update once"
		apt-get update -qq >/dev/null 2>&1 || true
		out=$(apt-get download "$@" 2>&1) && return 0
	fi
	echo "$out" | grep -v 'unsandboxed' >&2 || true
	return 1
}

# Emit the load order (dependencies first) of module $1 using the
# modules index file $2 ("name path" lines). Builtin modules are skipped.
resolve_deps() {
	local name=$1 index=$2 builtin=$3 path deps d
	case " $RESOLVED " in *" $name "*) return 0 ;; esac
	RESOLVED="$RESOLVED $name"
	if grep -qx "$name" "$builtin"; then return 0; fi
	path=$(awk -v n="$name" '$1 == n { print $2; exit }' "$index")
	[ -n "$path" ] || { echo "module $name not found" >&2; return 1; }
	deps=$(decompress_ko "$path" | tr '\0' '\n' | sed -n 's/^depends=//p')
	for d in ${deps//,/ }; do
		resolve_deps "${d//-/_}" "$index" "$builtin" || return 1
	done
	ORDER="$ORDER $name"
}

decompress_ko() {
	case $1 in
	*.ko.xz) xz -dc "$1" ;;
	*.ko.zst) zstd -dcq "$1" ;;
	*.ko.gz) gzip -dc "$1" ;;
	*) cat "$1" ;;
	esac
}

# Download and extract the kernel + kvm modules into $CACHE/kernel-$KVER.
ensure_kernel() {
	if [ "$REFRESH" = 0 ] && [ -f "$CACHE/current-kernel" ]; then
		KDIR=$CACHE/$(cat "$CACHE/current-kernel")
		if [ -f "$KDIR/vmlinuz" ] && [ -f "$KDIR/order-amd" ]; then
			return 0
		fi
	fi
	command -v apt-get >/dev/null 2>&1 ||
		skip "no cached kernel in $CACHE and no apt-get to download one"
	mkdir -p "$CACHE/debs"
	local debdir=$CACHE/debs tmp deb dep kver mdir
	tmp=$(mktemp -d "$CACHE/.extract.XXXXXX")
	# shellcheck disable=SC2064
	trap "rm -rf '$tmp'" EXIT
	echo "$PROG: downloading $KERNEL_PKG (first run only) ..." >&2
	(cd "$tmp" && apt_download "$KERNEL_PKG") ||
		skip "cannot download $KERNEL_PKG (no network and nothing cached in $CACHE)"
	deb=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n1)
	# A meta package (linux-image-amd64) only depends on the real one.
	dpkg-deb -c "$deb" >"$tmp/contents"
	if ! grep -q '/vmlinuz-' "$tmp/contents"; then
		dep=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' |
			sed -n 's/^ *\(linux-image-[^ ]*\).*/\1/p' | head -n1)
		[ -n "$dep" ] || die "$KERNEL_PKG has no vmlinuz and no linux-image dependency"
		mv "$deb" "$debdir/"
		echo "$PROG: downloading $dep ..." >&2
		(cd "$tmp" && apt_download "$dep") || skip "cannot download $dep"
		deb=$(find "$tmp" -maxdepth 1 -name '*.deb' | head -n1)
	fi
	mkdir "$tmp/x"
	dpkg-deb -x "$deb" "$tmp/x"
	mv "$deb" "$debdir/"
	local vmlinuz
	vmlinuz=$(find "$tmp/x/boot" -name 'vmlinuz-*' | head -n1)
	kver=${vmlinuz##*/vmlinuz-}
	mdir=$tmp/x/lib/modules/$kver
	[ -d "$mdir" ] || mdir=$tmp/x/usr/lib/modules/$kver
	[ -d "$mdir" ] || die "no modules directory for $kver in $deb"

	local out=$CACHE/kernel-$kver
	rm -rf "$out.new"
	mkdir -p "$out.new/modules"
	cp "$vmlinuz" "$out.new/vmlinuz"
	cp "$tmp/x/boot/config-$kver" "$out.new/config" 2>/dev/null || true
	echo "$kver" >"$out.new/version"
	# Index of all modules and the list of builtin ones.
	(cd "$mdir" && find kernel -name '*.ko*') | awk -v d="$mdir" '{
		n = $0; sub(/.*\//, "", n); sub(/\.ko.*/, "", n); gsub(/-/, "_", n)
		print n, d "/" $0 }' >"$tmp/index"
	{ sed 's|.*/||; s|\.ko.*||; s|-|_|g' "$mdir/modules.builtin" 2>/dev/null || true; } >"$tmp/builtin"
	local top vendor m
	for vendor in amd intel; do
		top=kvm_$vendor
		RESOLVED='' ORDER=''
		resolve_deps "$top" "$tmp/index" "$tmp/builtin" ||
			die "cannot resolve module dependencies of $top"
		: >"$out.new/order-$vendor"
		for m in $ORDER; do
			decompress_ko "$(awk -v n="$m" '$1 == n { print $2; exit }' "$tmp/index")" \
				>"$out.new/modules/$m.ko"
			echo "$m" >>"$out.new/order-$vendor"
		done
	done
	rm -rf "$out"
	mv "$out.new" "$out"
	echo "kernel-$kver" >"$CACHE/current-kernel"
	rm -rf "$tmp"
	trap - EXIT
	KDIR=$out
	echo "$PROG: cached kernel $kver in $out" >&2
}

# QEMU boots an uncompressed ELF vmlinux with a PVH entry note directly, which
# skips the bzImage self-decompression: that alone takes ~2.7 s under TCG.
# Extract it once from the bzImage (like the kernel's scripts/extract-vmlinux).
ensure_vmlinux() {
	KERNEL_IMAGE=$KDIR/vmlinuz
	[ "${LIBVMM_NESTED_PVH:-1}" != 0 ] || return 0
	if [ -f "$KDIR/vmlinux" ]; then KERNEL_IMAGE=$KDIR/vmlinux; return 0; fi
	[ ! -e "$KDIR/vmlinux.unavailable" ] || return 0
	if ! grep -q '^CONFIG_PVH=y' "$KDIR/config" 2>/dev/null; then
		: >"$KDIR/vmlinux.unavailable"
		return 0
	fi
	local magic cmd off
	for magic in '\xFD7zXZ\x00:xz -dcq' '\x28\xB5\x2F\xFD:zstd -dcq' '\x1F\x8B\x08:gzip -dcq' \
		'\x02\x21\x4C\x18:lz4 -dcq' '\x5D\x00\x00:xz -dcq --format=lzma'; do
		cmd=${magic#*:}
		command -v "${cmd%% *}" >/dev/null 2>&1 || continue
		# shellcheck disable=SC2013 # offsets are plain numbers
		for off in $(LC_ALL=C grep -obUaP "${magic%%:*}" "$KDIR/vmlinuz" 2>/dev/null | cut -d: -f1); do
			{ tail -c +$((off + 1)) "$KDIR/vmlinuz" | $cmd >"$KDIR/vmlinux.new" 2>/dev/null; } || true
			if [ "$(head -c4 "$KDIR/vmlinux.new" | od -An -c | tr -d ' ')" = '177ELF' ]; then
				mv "$KDIR/vmlinux.new" "$KDIR/vmlinux"
				KERNEL_IMAGE=$KDIR/vmlinux
				return 0
			fi
		done
	done
	rm -f "$KDIR/vmlinux.new"
	: >"$KDIR/vmlinux.unavailable"
	log "could not extract an ELF vmlinux, booting the bzImage (slower)"
}

# A static busybox: the host's (busybox-static) or one extracted into the cache.
ensure_busybox() {
	local b
	for b in "${LIBVMM_NESTED_BUSYBOX:-}" /bin/busybox /usr/bin/busybox "$CACHE/busybox"; do
		if [ -z "$b" ] || [ ! -x "$b" ]; then continue; fi
		# ldd exits 1 for static binaries (pipefail): look at its message.
		if { LC_ALL=C ldd "$b" 2>&1 || true; } | grep -q 'not a dynamic executable'; then
			BUSYBOX=$b
			return 0
		fi
	done
	command -v apt-get >/dev/null 2>&1 || skip "no static busybox (install busybox-static)"
	local tmp
	tmp=$(mktemp -d "$CACHE/.bb.XXXXXX")
	echo "$PROG: downloading busybox-static ..." >&2
	(cd "$tmp" && apt_download busybox-static) || { rm -rf "$tmp"; skip "cannot download busybox-static"; }
	dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/x"
	cp "$tmp/x/bin/busybox" "$CACHE/busybox.new" && mv "$CACHE/busybox.new" "$CACHE/busybox"
	rm -rf "$tmp"
	BUSYBOX=$CACHE/busybox
}

# The guest's /init. It reads /libvmm/config from the per-run payload.
# It uses busybox only (via /libvmm/bb), so payload files that replace
# /bin/sh or other /bin entries (e.g. CMD=/bin/sh from the host) do not break it.
# If poweroff fails, init exits: the kernel panics, panic=-1 reboots and
# QEMU's -no-reboot turns that into an exit.
# shellcheck disable=SC2016 # expanded by the guest's shell
GUEST_INIT='#!/bin/busybox sh
export PATH=/libvmm/bb
export HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
. /libvmm/config
M="@@LIBVMM-NESTED-$TOKEN@@"
up() { cut -d" " -f1 /proc/uptime; }
finish() { sync; poweroff -f; sleep 5; exit 1; }
skip() {
	echo "$M SKIP $*"
	dmesg | tail -n 40
	finish
}
echo "$M BOOTED uptime=$(up)"
if grep -qw svm /proc/cpuinfo; then
	vendor=amd
elif grep -qw vmx /proc/cpuinfo; then
	vendor=intel
else
	skip "guest CPU has neither svm nor vmx in /proc/cpuinfo (QEMU -cpu model without svm?)"
fi
for m in $(cat /lib/modules/order-$vendor); do
	p=
	[ $m = kvm_amd ] && p=$KVM_AMD_PARAMS
	if ! err=$(insmod /lib/modules/$m.ko $p 2>&1); then
		skip "insmod $m${p:+ $p} failed: $err; kernel log: $(dmesg | grep -iE "kvm|svm|vmx" | tail -n 5 | tr "\n" " ")"
	fi
done
[ -e /dev/kvm ] || mknod /dev/kvm c 10 232
if ! (exec 3<>/dev/kvm) 2>/dev/null; then
	skip "/dev/kvm cannot be opened after loading kvm_$vendor: $(dmesg | grep -iE "kvm|svm|vmx" | tail -n 5 | tr "\n" " ")"
fi
echo "$M KVM_READY vendor=$vendor uptime=$(up)"
# Keep the kernel from writing to the console while CMD runs (dumped below).
echo 1 >/proc/sys/kernel/printk
stty -F /dev/ttyS1 raw -echo 2>/dev/null
[ "$SPLIT_STDERR" = 1 ] && stty -F /dev/ttyS2 raw -echo 2>/dev/null
mkdir -p "$CWD" && cd "$CWD"
n0=$(dmesg | wc -l)
echo "$M BEGIN uptime=$(up)"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [ "$SPLIT_STDERR" = 1 ]; then
	/libvmm/bb/sh /libvmm/cmd.sh </dev/null >/dev/ttyS1 2>/dev/ttyS2
	rc=$?
else
	/libvmm/bb/sh /libvmm/cmd.sh </dev/null >/dev/ttyS1 2>&1
	rc=$?
fi
export PATH=/libvmm/bb
echo "$M END status=$rc uptime=$(up)"
# Kernel messages logged while CMD ran (e.g. KVM warnings).
echo "$M DMESG"
dmesg | tail -n +$((n0 + 1)) | tail -n 200
echo "$M DMESG_END"
finish
'

# Base initramfs: busybox + modules + /init. Cached per kernel/busybox/init.
ensure_base() {
	local key
	key=$( { echo "$GUEST_INIT"; cat "$KDIR/version"; sha256sum "$BUSYBOX" "$KDIR"/modules/*.ko; } |
		sha256sum | cut -c1-16)
	BASE=$KDIR/base-$key.cpio
	[ -f "$BASE" ] && return 0
	local tmp
	tmp=$(mktemp -d "$CACHE/.base.XXXXXX")
	mkdir -p "$tmp"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,root,run,etc,lib/modules,libvmm/bb}
	cp "$BUSYBOX" "$tmp/bin/busybox"
	local a
	for a in $("$tmp/bin/busybox" --list); do
		[ "$a" = busybox ] && continue
		ln -sf busybox "$tmp/bin/$a"
		ln -sf ../../bin/busybox "$tmp/libvmm/bb/$a"
	done
	cp "$KDIR"/modules/*.ko "$KDIR"/order-* "$tmp/lib/modules/"
	printf '%s' "$GUEST_INIT" >"$tmp/init"
	chmod 755 "$tmp/init"
	chmod 1777 "$tmp/tmp"
	(cd "$tmp" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$BASE.new"
	mv "$BASE.new" "$BASE"
	rm -rf "$tmp"
	# Drop stale base images of this kernel.
	find "$KDIR" -maxdepth 1 -name 'base-*.cpio' ! -name "${BASE##*/}" -delete
}

ensure_kernel
ensure_vmlinux
ensure_busybox
ensure_base
flock -u 9
exec 9>&-
log "setup done after $(elapsed)s (kernel $KERNEL_IMAGE $(cat "$KDIR/version"), busybox $BUSYBOX)"

# ------------------------------------------------------------------ payload
WORK=$(mktemp -d "${TMPDIR:-/tmp}/libvmm-nested.XXXXXX")
QPID=
# shellcheck disable=SC2317 # called via trap
cleanup() {
	if [ -n "$QPID" ]; then kill -TERM "$QPID" 2>/dev/null || true; fi
	if [ "$KEEP" = 1 ]; then echo "$PROG: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ROOT=$WORK/root
mkdir -p "$ROOT/libvmm"

abspath() { realpath -s -m -- "$1"; } # absolute, symlinks kept

# Copy host path $1 to the same path under $ROOT (dereferencing symlinks).
copy_in() {
	local src=$1 dst=$ROOT$1
	[ -e "$dst" ] && return 0
	mkdir -p "${dst%/*}"
	cp -RL --preserve=mode,timestamps "$src" "$dst"
}

# Copy the shared libraries (and the ELF interpreter) that $1 needs.
copy_libs() {
	local f=$1 out line lib
	# Only ELF files.
	[ -f "$f" ] && [ "$(head -c4 "$f" | od -An -c | tr -d ' ')" = '177ELF' ] || return 0
	out=$(LC_ALL=C ldd "$f" 2>&1) || return 0 # static, or not loadable here
	if grep -q 'not found' <<<"$out"; then
		die "shared libraries of $f not found on the host: $(grep 'not found' <<<"$out" | tr '\n' ' ')"
	fi
	while read -r line; do
		case $line in
		*'=> /'*) lib=${line#*=> }; lib=${lib%% (*} ;;
		/*) lib=${line%% (*} ;;
		*) continue ;;
		esac
		copy_in "$lib"
	done <<<"$out"
}

CMD_PATH=$1
shift
case $CMD_PATH in
*/*) ;;
*) CMD_PATH=$(command -v "$CMD_PATH") || die "command '$CMD_PATH' not found in PATH" ;;
esac
CMD_PATH=$(abspath "$CMD_PATH")
{ [ -f "$CMD_PATH" ] && [ -x "$CMD_PATH" ]; } || die "$CMD_PATH is not an executable file"
copy_in "$CMD_PATH"
copy_libs "$CMD_PATH"
for f in ${FILES[@]+"${FILES[@]}"}; do
	f=$(abspath "$f")
	[ -e "$f" ] || die "--file $f does not exist"
	copy_in "$f"
	if [ -d "$f" ]; then
		while IFS= read -r -d '' g; do copy_libs "$g"; done < <(find -L "$f" -type f -perm -u+x -print0)
	else
		copy_libs "$f"
	fi
done

shq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

TOKEN=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
{
	echo "TOKEN=$TOKEN"
	echo "KVM_AMD_PARAMS=$(shq "$KVM_AMD_PARAMS")"
	echo "CWD=$(shq "$PWD")"
	echo "SPLIT_STDERR=$SPLIT_STDERR"
} >"$ROOT/libvmm/config"
{
	echo '#!/bin/sh'
	if [ -n "${LD_LIBRARY_PATH:-}" ]; then echo "export LD_LIBRARY_PATH=$(shq "$LD_LIBRARY_PATH")"; fi
	for e in ${ENVS[@]+"${ENVS[@]}"}; do echo "export ${e%%=*}=$(shq "${e#*=}")"; done
	printf 'exec %s' "$(shq "$CMD_PATH")"
	for a in "$@"; do printf ' %s' "$(shq "$a")"; done
	echo
} >"$ROOT/libvmm/cmd.sh"
mkdir -p "$ROOT$PWD"

(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$WORK/payload.cpio"
# The kernel unpacks concatenated newc archives; later files win.
cat "$BASE" "$WORK/payload.cpio" >"$WORK/initrd.cpio"
rm -f "$WORK/payload.cpio"
log "initramfs $(($(stat -c %s "$WORK/initrd.cpio") / 1024)) KiB ready after $(elapsed)s"

# ------------------------------------------------------------------ boot
CONSOLE=$WORK/console.log
: >"$CONSOLE"
APPEND="console=ttyS0 panic=-1 quiet loglevel=4 mitigations=off${EXTRA_APPEND:+ $EXTRA_APPEND}"
# shellcheck disable=SC2054 # commas are QEMU option syntax
QARGS=(
	-accel tcg
	-cpu "$CPU"
	-smp "$SMP"
	-m "$MEM"
	-nodefaults -nographic -no-reboot -monitor none
	-kernel "$KERNEL_IMAGE"
	-initrd "$WORK/initrd.cpio"
	-append "$APPEND"
	-serial "file:$CONSOLE"
	-chardev stdio,id=cmdout,signal=off
	-serial chardev:cmdout
)
if [ "$SPLIT_STDERR" = 1 ]; then
	QARGS+=(-chardev "file,id=cmderr,path=/proc/self/fd/2,append=on" -serial chardev:cmderr)
fi
log "$(printf '%q ' "$QEMU" "${QARGS[@]}")"

# timeout(1) sends TERM, then KILL 5 s later if QEMU did not exit.
T_QEMU=$(date +%s.%N)
timeout -k 5 "$TIMEOUT" "$QEMU" "${QARGS[@]}" </dev/null &
QPID=$!
TAILPID=
if [ "$VERBOSE" != 0 ]; then
	tail -n +1 -f --pid="$QPID" "$CONSOLE" | sed -u 's/\r$//; s/^/[guest] /' >&2 &
	TAILPID=$!
fi
QRC=0
wait "$QPID" || QRC=$?
QPID=
if [ -n "$TAILPID" ]; then wait "$TAILPID" 2>/dev/null || true; fi

M="@@LIBVMM-NESTED-$TOKEN@@"
marker() { tr -d '\r' <"$CONSOLE" | grep -a -o "$M $1.*" | head -n1 || true; }
console_tail() {
	tr -d '\r' <"$CONSOLE" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g' | tail -n 30 | sed 's/^/[guest] /' >&2
}
uptime_of() { sed -n 's/.*uptime=\([0-9.]*\).*/\1/p' <<<"$1"; }
BOOTED=$(marker BOOTED)
READY=$(marker KVM_READY)
BEGIN=$(marker BEGIN)
END=$(marker END)
SKIPMSG=$(marker SKIP)

if [ -n "$END" ]; then
	STATUS=$(sed -n 's/.*status=\([0-9]*\).*/\1/p' <<<"$END")
	log "guest: init at $(uptime_of "$BOOTED")s, /dev/kvm ready at $(uptime_of "$READY")s, CMD $(uptime_of "$BEGIN")s..$(uptime_of "$END")s (guest uptime); qemu ran $(awk -v a="$T_QEMU" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')s; wall $(elapsed)s; status $STATUS"
	KMSG=$(tr -d '\r' <"$CONSOLE" | sed -n "/$M DMESG\$/,/$M DMESG_END/p" | sed '1d;$d')
	if [ -n "$KMSG" ] && { [ "$STATUS" != 0 ] || [ "$VERBOSE" != 0 ]; }; then
		echo "$PROG: guest kernel messages while CMD ran:" >&2
		printf '%s\n' "$KMSG" | sed 's/^/[guest] /' >&2
	fi
	if [ "$STATUS" != 0 ]; then echo "$PROG: CMD exited with status $STATUS" >&2; fi
	exit "$STATUS"
fi
if [ -n "$SKIPMSG" ]; then
	skip "/dev/kvm unavailable in the guest: ${SKIPMSG#"$M SKIP "}"
fi
if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
	if [ -n "$BEGIN" ]; then where="CMD was still running"; else where="the guest never started CMD"; fi
	echo "$PROG: timeout after ${TIMEOUT}s ($where); console tail:" >&2
	console_tail
	exit $EX_TIMEOUT
fi
echo "$PROG: guest exited (qemu status $QRC) without reporting CMD's status; console tail:" >&2
console_tail
exit $EX_HARNESS
