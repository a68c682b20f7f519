#!/usr/bin/env bash
# Checks that each ARM binary is static (no program interpreter, no dynamic
# section), runs under qemu, and fits the size budget; prints its size.
#   cross/check-static.sh TRIPLE…
set -euo pipefail
cd "$(dirname "$0")/.."
BUDGET=$((1536 * 1024))   # 1.5 MiB per binary
status=0
for triple in "$@"; do
  bin="target/$triple/release/ferry"
  case "$triple" in
    aarch64-*) qemu=(qemu-aarch64-static -cpu cortex-a53) ;;
    armv7-*) qemu=(qemu-arm-static -cpu cortex-a7) ;;
  esac
  size=$(stat -c %s "$bin")
  if readelf -lW "$bin" | grep -q 'INTERP'; then echo "FAIL $bin has a program interpreter"; status=1; fi
  if readelf -dW "$bin" 2>/dev/null | grep -q 'NEEDED\|(DYNAMIC)'; then echo "FAIL $bin has a dynamic section"; status=1; fi
  file "$bin" | grep -q 'statically linked' || { echo "FAIL file(1) does not call $bin static"; status=1; }
  [ "$size" -le "$BUDGET" ] || { echo "FAIL $bin is $size bytes, over the $BUDGET budget"; status=1; }
  version="$("${qemu[@]}" "$bin" --version)"
  boards="$("${qemu[@]}" "$bin" boards | wc -l)"
  [ "$boards" -ge 6 ] || { echo "FAIL $bin lists $boards lines of boards"; status=1; }
  echo "ok   $triple: static, $size bytes, '$version', $((boards - 1)) boards under ${qemu[*]}"
done
exit $status
