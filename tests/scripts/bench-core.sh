#!/usr/bin/env bash
# `make bench-core`: checkpoint and restore the counter workload at several
# memory sizes on one engine, and print times, payload sizes and ferry's own
# peak RSS (its own VmHWM, not runc's) — which must not grow with the container.
set -euo pipefail
cd "$(dirname "$0")/../.."
ferry=target/release/ferry
sizes="${FERRY_BENCH_SIZES:-16 64 128 256}"
work="$(mktemp -d)"
trap 'docker rm -f ferry-bench-src ferry-bench-dst >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

printf '%6s %11s %9s %11s %11s %9s %9s\n' MiB checkpoint_s pack_s restore_s raw_MiB lz4_MiB rss_KiB
for mib in $sizes; do
  docker rm -f ferry-bench-src ferry-bench-dst >/dev/null 2>&1 || true
  docker run -d --name ferry-bench-src ferry-workload:latest /counter "$mib" 100 >/dev/null
  until docker logs ferry-bench-src 2>/dev/null | grep -q '^count='; do sleep 0.2; done
  "$ferry" -q --work-dir "$work/spool" checkpoint ferry-bench-src -o "$work/p.ferry" --json >"$work/checkpoint.json"
  "$ferry" -q --work-dir "$work/spool" restore "$work/p.ferry" --name ferry-bench-dst --json >"$work/restore.json"
  python3 - "$mib" "$work" <<'PY'
import json, sys
mib, work = sys.argv[1], sys.argv[2]
c = json.load(open(f"{work}/checkpoint.json"))
r = json.load(open(f"{work}/restore.json"))
rss = max(c["peak_rss_kib"], r["peak_rss_kib"])
print(f"{mib:>6} {c['checkpoint_secs']:>11.3f} {c['pack_secs']:>9.3f} {r['restore_secs'] + r['unpack_secs']:>11.3f} "
      f"{c['raw_bytes']/2**20:>11.1f} {c['compressed_bytes']/2**20:>9.1f} {rss:>9}")
PY
  rm -f "$work/p.ferry"
done
