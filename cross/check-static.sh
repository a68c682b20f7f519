#!/usr/bin/env bash
# Checks that each ARM binary is static (no program interpreter, no dynamic
# section), runs under qemu, and fits the size budget; prints its size.
#   cross/check-static.sh TRIPLE…
set -euo pipefail
cd "$(dirname "$0")/.."
# 3.0 MiB per binary: 1.5 MiB before TLS (issue 12) — rustls, ring and the
# certificate code cost about 0.7 MiB on aarch64.
BUDGET=$((3072 * 1024))
status=0
for triple in "$@"; do
  bin="target/$triple/release/ferry"
  case "$triple" in
    aarch64-*) qemu=(qemu-aarch64-static -cpu cortex-a53) ;;
    armv7-*) qemu=(qemu-arm-static -cpu cortex-a7) ;;
  esac
  problems=()
  size=$(stat -c %s "$bin")
  readelf -lW "$bin" | grep -q 'INTERP' && problems+=("it has a program interpreter")
  readelf -dW "$bin" 2>/dev/null | grep -q 'NEEDED\|(DYNAMIC)' && problems+=("it has a dynamic section")
  file "$bin" | grep -q 'statically linked' || problems+=("file(1) does not call it static")
  [ "$size" -le "$BUDGET" ] || problems+=("it is $size bytes, over the $BUDGET budget")
  version="$("${qemu[@]}" "$bin" --version)"
  boards="$("${qemu[@]}" "$bin" boards | wc -l)"
  [ "$boards" -ge 6 ] || problems+=("it lists $boards lines of boards")
  if [ ${#problems[@]} -eq 0 ]; then
    echo "ok   $triple: static, $size bytes, '$version', $((boards - 1)) boards under ${qemu[*]}"
  else
    (IFS=';'; echo "FAIL $bin: ${problems[*]}")
    status=1
  fi
done
exit $status
