#!/usr/bin/env bash
# `make demo`: start a counter holding 32 MiB of memory, checkpoint it with
# ferry, restore it into a new container, and show the counter carrying on.
set -euo pipefail
cd "$(dirname "$0")/../.."
ferry=target/release/ferry
work="$(mktemp -d)"
payload="$work/counter.ferry"
source=ferry-demo
restored=ferry-demo-restored

cleanup() {
  docker rm -f "$source" "$restored" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
cleanup
mkdir -p "$work"
# A host key of the demo's own (a real host makes one in /etc/ferry with
# `ferry keys init`): the payload is signed with it, and restore checks that.
export FERRY_CONFIG_DIR="$work/config"
echo "== ferry keys init (in $FERRY_CONFIG_DIR, for this demo only)"
"$ferry" keys init --name ferry-demo

echo "== starting $source: a counter holding 32 MiB of random memory"
docker run -d --name "$source" ferry-workload:latest /counter 32 200 >/dev/null
sleep 3
docker logs "$source" 2>&1 | tail -n 3

echo "== ferry checkpoint $source"
"$ferry" --work-dir "$work/spool" checkpoint "$source" -o "$payload"
echo "last line of $source before the checkpoint:"
docker logs "$source" 2>&1 | tail -n 1

echo "== ferry restore into a new container, $restored"
"$ferry" --work-dir "$work/spool" restore "$payload" --name "$restored"
sleep 2
echo "first lines of $restored (a new container; no born= line, so no restart):"
docker logs "$restored" 2>&1 | head -n 3
docker kill --signal USR1 "$restored" >/dev/null
sleep 0.5
echo "memory checksum before and after:"
docker logs "$source" 2>&1 | grep -m1 '^sum='
docker logs "$restored" 2>&1 | grep -m1 'check=' || true
