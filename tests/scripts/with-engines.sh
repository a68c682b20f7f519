#!/usr/bin/env bash
# Runs a command with Docker engines up: `with-engines.sh a|b|c|all -- CMD…`.
# Engines that were already running are left running; the ones this script
# started are stopped again (by PID, in tests/scripts/engines.sh) however CMD ends.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
which="${1:?usage: with-engines.sh a|b|c|all -- CMD...}"
shift
[ "${1:-}" = "--" ] && shift

case "$which" in
  all) engines=(a b c) ;;
  *) engines=("$which") ;;
esac

started=()
for engine in "${engines[@]}"; do
  if ! bash "$here/engines.sh" status "$engine" >/dev/null 2>&1; then
    started+=("$engine")
  fi
  bash "$here/engines.sh" start "$engine"
done

stop_started() {
  for engine in "${started[@]}"; do
    bash "$here/engines.sh" stop "$engine" || true
  done
}
trap stop_started EXIT

export PATH="/usr/local/sbin:$PATH"
"$@"
