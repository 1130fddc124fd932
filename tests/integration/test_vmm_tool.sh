#!/bin/sh
# Tests of the `vmm` command: usage errors, version, and runs of the test guests on every
# backend this host has (exit statuses, console output, timeouts, bad images).
# usage: test_vmm_tool.sh VMM GUEST_DIR [MK_MP_SNAPSHOT]
set -u
VMM=$1
G=$2
MKMP=${3:-}
fails=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dd if=/dev/zero of="$tmp/big" bs=1024 count=3072 2>/dev/null

check() { # check NAME WANT_STATUS WANT_STDOUT_SUBSTRING CMD...
  name=$1; want=$2; out=$3; shift 3
  "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  st=$?
  if [ "$st" != "$want" ]; then
    echo "FAIL $name: status $st, want $want"; sed 's/^/     stderr: /' "$tmp/err"; fails=$((fails+1)); return
  fi
  if [ -n "$out" ] && ! grep -qF -- "$out" "$tmp/out"; then
    echo "FAIL $name: stdout lacks '$out'"; sed 's/^/     stdout: /' "$tmp/out"; fails=$((fails+1)); return
  fi
  echo "PASS $name"
}

check_err() { # check_err NAME WANT_STATUS WANT_STDERR_SUBSTRING CMD...
  name=$1; want=$2; err=$3; shift 3
  "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  st=$?
  if [ "$st" != "$want" ] || ! grep -qF -- "$err" "$tmp/err"; then
    echo "FAIL $name: status $st (want $want), stderr:"; sed 's/^/     /' "$tmp/err"; fails=$((fails+1)); return
  fi
  echo "PASS $name"
}

check "help" 0 "usage: vmm run" "$VMM" --help
check "version" 0 "vmm 0." "$VMM" version
check_err "no command" 125 "missing command" "$VMM"
check_err "unknown command" 125 "unknown command" "$VMM" frobnicate
check_err "unknown backend" 125 "unknown backend" "$VMM" run --backend xen "$G/hello.elf"
check_err "bad memory size" 125 "bad memory size" "$VMM" run --mem 3 "$G/hello.elf"
check_err "bad cpl" 125 "--cpl takes 0 or 3" "$VMM" run --cpl 2 "$G/hello.elf"
check_err "no image" 125 "exactly one IMAGE" "$VMM" run

ran=0
avail=""
for b in kvm bt pv; do
  if ! "$VMM" version | grep -q "backend $b  *available"; then
    why=$("$VMM" version | grep "backend $b" | sed 's/.*unavailable: //')
    echo "SKIP backend $b: $why"
    check_err "$b refused when unavailable" 125 "cannot create a VM on backend $b" "$VMM" run --backend "$b" "$G/hello.elf"
    continue
  fi
  ran=1
  check "$b hello cpl0" 0 "Hello from a libvmm guest!" "$VMM" run --backend "$b" "$G/hello.elf"
  check "$b hello cpl3" 0 "cpl=3" "$VMM" run --backend "$b" --cpl 3 "$G/hello.elf"
  check "$b exit hypercall status" 42 "" "$VMM" run --backend "$b" "$G/exitcode.elf"
  # More input than the UART's 4 KiB receive buffer: the rest waits for the guest to read it
  # (before, it was dropped, 'Q' with it, and the guest waited forever).
  awk 'BEGIN { for (i = 0; i < 6000; i++) printf "%c", 97 + (i * 7) % 26; printf "Q" }' |
    "$VMM" run --backend "$b" --timeout 120 "$G/stdin.elf" >"$tmp/out" 2>"$tmp/err"
  want=$(awk 'BEGIN { for (i = 0; i < 6000; i++) s += 97 + (i * 7) % 26; print "stdin bytes=6000 sum=" s }')
  if grep -qF "$want" "$tmp/out"; then echo "PASS $b stdin beyond the UART's buffer"
  else echo "FAIL $b stdin beyond the UART's buffer: want '$want', got:"; sed 's/^/     /' "$tmp/out" "$tmp/err"; fails=$((fails+1)); fi
  check "$b debug-exit status" 67 "" "$VMM" run --backend "$b" --cmdline port "$G/exitcode.elf"
  check "$b hlt ends with 0" 0 "halting" "$VMM" run --backend "$b" "$G/halt.elf"
  check_err "$b exception" 121 "#UD (vector 6)" "$VMM" run --backend "$b" "$G/ud.elf"
  check_err "$b cpl3 #GP" 121 "#GP (vector 13)" "$VMM" run --backend "$b" --cpl 3 "$G/cpl3.elf"
  check_err "$b timeout" 124 "timeout" "$VMM" run --backend "$b" --timeout 1 "$G/spin.elf"
  check_err "$b bad image" 125 "cannot load" "$VMM" run --backend "$b" "$VMM"
  check_err "$b missing image" 125 "cannot load" "$VMM" run --backend "$b" "$tmp/nonexistent"
  check_err "$b image larger than RAM" 125 "cannot load" "$VMM" run --backend "$b" --mem 2M --flat 0x100000 "$tmp/big"
  check_err "$b image over the system area" 125 "cannot prepare" "$VMM" run --backend "$b" --flat 0x20000 "$tmp/big"
  check "$b save on the snapshot hypercall" 0 "before snapshot" "$VMM" run --backend "$b" --save "$tmp/$b.snap" --stop-after-save "$G/snapme.elf"
  check "$b snapshot info" 0 "taken on:    $b" "$VMM" snapshot info "$tmp/$b.snap"
  check "$b restore continues" 5 "after snapshot:" "$VMM" restore --backend "$b" "$tmp/$b.snap"
  grep "after snapshot" "$tmp/out" > "$tmp/$b.after"
  # A two-vCPU snapshot made by a library program: vCPU 0 ends the VM once vCPU 1 has run
  # (restoring vCPU 0 alone times out with 124).
  # With --save, vCPU 1's snapshot hypercall saves with both vCPUs stopped; that file goes on
  # the same way. (`timeout`: a vCPU the tool failed to stop would hang it past --timeout.)
  if [ -n "$MKMP" ] && "$MKMP" "$tmp/$b.mp" "$b"; then
    check "$b restore runs every vCPU" 43 "mp ok" timeout 120 "$VMM" restore --backend "$b" --timeout 60 "$tmp/$b.mp"
    check "$b restore saves with every vCPU stopped" 43 "mp ok" timeout 120 "$VMM" restore --backend "$b" --timeout 60 --save "$tmp/$b.mp2" "$tmp/$b.mp"
    check "$b two-vCPU save info" 0 "vcpus:       2" "$VMM" snapshot info "$tmp/$b.mp2"
    check "$b two-vCPU save continues" 43 "mp ok" timeout 120 "$VMM" restore --backend "$b" --timeout 60 "$tmp/$b.mp2"
  else
    echo "FAIL $b two-vCPU snapshot: ${MKMP:-no mk_mp_snapshot given} could not make it"; fails=$((fails+1))
  fi
  "$VMM" run --backend "$b" "$G/snapme.elf" 2>/dev/null | grep "after snapshot" > "$tmp/$b.straight"
  if cmp -s "$tmp/$b.after" "$tmp/$b.straight"; then echo "PASS $b restored run prints what an uninterrupted run prints"; else echo "FAIL $b restored run differs"; fails=$((fails+1)); fi
  # SIGUSR1 with --save: a snapshot of a guest that never asks for one (spin.elf loops).
  # Generous waits: under the nested harness (QEMU TCG) bt starts slowly.
  if [ "$b" != kvm ] && [ -n "${LIBVMM_NESTED:-}" ]; then
    # Seen there, not understood: bt or pv started in the background printed nothing for
    # 120 s (one of them per run, either). The host runs this check for both.
    echo "SKIP $b save on SIGUSR1: inside the nested harness (runs on the host)"
    avail="$avail $b"
    continue
  fi
  rm -f "$tmp/$b.usr1"
  "$VMM" run --backend "$b" --timeout 300 --save "$tmp/$b.usr1" "$G/spin.elf" </dev/null >"$tmp/usr1.out" 2>&1 &
  pid=$!
  i=0
  while ! grep -q spinning "$tmp/usr1.out" 2>/dev/null && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
  if ! grep -q spinning "$tmp/usr1.out"; then
    echo "  ($b: no 'spinning' after 120 s; sending SIGUSR1 anyway; where its threads are:)"
    for t in /proc/"$pid"/task/*; do
      echo "    thread ${t##*/}: $(cut -d' ' -f3 "$t/stat" 2>/dev/null) $(cat "$t/wchan" 2>/dev/null)"
      sed 's/^/      /' "$t/stack" 2>/dev/null | head -12
    done
  fi
  kill -USR1 "$pid"
  i=0
  while [ ! -f "$tmp/$b.usr1" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
  kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  [ -f "$tmp/$b.usr1" ] || { echo "  ($b: no snapshot after SIGUSR1; the run printed:)"; sed 's/^/    /' "$tmp/usr1.out"; }
  check "$b save on SIGUSR1" 0 "taken on:    $b" "$VMM" snapshot info "$tmp/$b.usr1"
  avail="$avail $b"
done
for a in $avail; do for b in $avail; do
  [ "$a" = "$b" ] && continue
  check "snapshot from $a restored on $b" 5 "$(cat "$tmp/$a.straight")" "$VMM" restore --backend "$b" "$tmp/$a.snap"
  check "two-vCPU snapshot from $a restored on $b" 43 "mp ok" timeout 120 "$VMM" restore --backend "$b" --timeout 60 "$tmp/$a.mp"
done; done
check_err "restore of a corrupt file" 125 "cannot load snapshot" "$VMM" restore "$tmp/big"
check_err "info of a missing file" 125 "cannot load snapshot" "$VMM" snapshot info "$tmp/none"
[ "$ran" = 1 ] || echo "SKIP guest runs: no backend can run on this host"
[ "$fails" = 0 ] && echo "OK" || echo "FAILED: $fails"
[ "$fails" = 0 ]
