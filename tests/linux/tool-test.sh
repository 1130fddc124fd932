#!/bin/sh
# `vmm run --kernel` option handling; needs no /dev/kvm.  usage: tool-test.sh VMM
set -u
VMM=$1
fails=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
check() { # NAME WANT_STATUS WANT_OUTPUT_SUBSTRING CMD...
  name=$1 want=$2 text=$3
  shift 3
  "$@" >"$tmp/out" 2>&1 </dev/null
  st=$?
  if [ "$st" = "$want" ] && grep -qF -- "$text" "$tmp/out"; then echo "PASS $name"; else
    echo "FAIL $name: status $st (want $want), output:"; sed 's/^/    /' "$tmp/out"; fails=$((fails + 1))
  fi
}
: >"$tmp/k"
check "help mentions --kernel" 0 "--kernel FILE" "$VMM" run --help
check "--initrd needs --kernel" 125 "need --kernel" "$VMM" run --initrd "$tmp/k" "$tmp/k"
check "--guest-decompress needs --kernel" 125 "need --kernel" "$VMM" run -g "$tmp/k"
check "--kernel takes no IMAGE" 125 "takes no IMAGE" "$VMM" run --kernel "$tmp/k" "$tmp/k"
check "--cpl does not apply" 125 "do not apply" "$VMM" run --kernel "$tmp/k" --cpl 3
check "empty kernel refused" 125 "vmm:" "$VMM" run --kernel "$tmp/k"
echo "vmm run --kernel options: $fails failure(s)"
[ "$fails" = 0 ]
