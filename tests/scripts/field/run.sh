#!/usr/bin/env bash
# The field test (issue 10): ferry on two emulated arm64 boards.
#   tests/scripts/field/run.sh
# Builds (or reuses) the guest image, the static aarch64 ferry and the arm64
# workloads; boots guests A and B at once; installs ferry as the README tells a
# user (one file) with boards/ferry-serve.service under the guests' systemd;
# then: ferry doctor on both; a counter migrated A -> B -> A -> B, counter and
# memory checksum checked after every hop; Redis migrated A -> B with its data;
# ferry replicate A -> B, guest A's qemu killed, ferry failover on B.
# All times are under qemu TCG emulation, not a board's. Exits non-zero if any
# check fails; the guests are always stopped (by PID) at the end.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
. "$here/lib.sh"
cd "$repo"
[ "$(id -u)" = 0 ] || { echo "field: run as root" >&2; exit 1; }

TRIPLE=aarch64-unknown-linux-musl
NAME=field-counter
MIB="${FIELD_MIB:-16}"
TOKEN=/etc/ferry/token
FERRY_ARGS="--token-file $TOKEN"
t_start=$SECONDS
failures=()
known=()
timings=()

say() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures+=("$*"); }
timing() { timings+=("$(printf '%-44s %s' "$1" "$2")"); }
cleanup() { bash "$here/guests.sh" stop >&2 || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. what goes into the guests ----------------------------------------------
say "guest image"
t=$SECONDS
image="$(bash "$here/image.sh")" || { echo "field: the guest image could not be built" >&2; exit 1; }
timing "guest image (build or cache check)" "$((SECONDS - t)) s"

say "static aarch64 ferry"
t=$SECONDS
{ bash cross/setup.sh && bash cross/build.sh "$TRIPLE"; } >&2 || { echo "field: the aarch64 build failed" >&2; exit 1; }
FERRY_BIN="target/$TRIPLE/release/ferry"
timing "aarch64 ferry (build or up to date)" "$((SECONDS - t)) s"
ok "$FERRY_BIN: $(stat -c %s "$FERRY_BIN") bytes, $(file -b "$FERRY_BIN" | cut -d, -f1-2)"

mkdir -p "$FIELD_RUN"
counter="$FIELD_RUN/counter-aarch64"
if [ ! -x "$counter" ] || [ tests/scripts/workload/counter.c -nt "$counter" ]; then
  ZIG_GLOBAL_CACHE_DIR=/var/cache/ferry-cross/zig \
    /opt/ferry-cross/venv/bin/python -m ziglang cc -target aarch64-linux-musl -static -O2 -s \
    -o "$counter" tests/scripts/workload/counter.c || { echo "field: the counter does not compile" >&2; exit 1; }
fi
ok "arm64 counter: $(file -b "$counter" | cut -d, -f1-2)"

# --- 2. two guests --------------------------------------------------------------
say "booting guests A and B (qemu TCG, cortex-a72, 1 vCPU, $FIELD_MEM MiB each)"
bash "$here/guests.sh" stop
t=$SECONDS
bash "$here/guests.sh" start || { echo "field: the guests did not boot" >&2; exit 1; }
timing "boot both guests to ssh" "$((SECONDS - t)) s"

# --- 3. install ferry as a user would -------------------------------------------
say "installing ferry and its agent unit in both guests"
t=$SECONDS
[ -s "$FIELD_RUN/token" ] || head -c 32 /dev/urandom | base64 >"$FIELD_RUN/token"
install_guest() {
  local x="$1"
  put "$x" "$FERRY_BIN" /tmp/ferry &&
  put "$x" boards/ferry-serve.service /tmp/ferry-serve.service &&
  put "$x" "$FIELD_RUN/token" /tmp/ferry-token &&
  g "$x" 'set -e
    install -m 0755 /tmp/ferry /usr/local/bin/ferry
    install -d -m 0755 /etc/ferry
    install -m 0600 /tmp/ferry-token /etc/ferry/token
    # As the unit says: one key per board, made once. Peers dial each other
    # through the host (10.0.2.2), where both agents are forwarded.
    [ -s /etc/ferry/key.pem ] || ferry keys init --name "field-'"$x"'" --san 10.0.2.2 --san 127.0.0.1 >/dev/null
    # The unit says: edit --board for the board. These guests are 1-CPU boards
    # capped like the paper edge node; the token is the optional second factor.
    sed -i "s/--board [^ ]*/--board edge-128m/; s|ferry serve |ferry serve --token-file /etc/ferry/token |; s|ferry recover|ferry recover --token-file /etc/ferry/token|" /tmp/ferry-serve.service
    install -m 0644 /tmp/ferry-serve.service /etc/systemd/system/ferry-serve.service
    systemctl daemon-reload
    systemctl enable --now docker >/dev/null 2>&1'
}
# Each board trusts the other's key, then its agent starts (it refuses to
# start trusting nobody). /health is asked over mutual TLS with the board's
# own certificate, which its agent trusts.
start_agent() {
  local x="$1" other="$2"
  g "$x" "ferry trust remove field-$other >/dev/null 2>&1; ferry trust add field-$other $(g "$other" ferry keys show | grep -o 'sha256:[0-9a-f]*')" &&
  g "$x" 'set -e
    systemctl enable --now ferry-serve >/dev/null 2>&1
    health() { curl -fsSk --cert /etc/ferry/cert.pem --key /etc/ferry/key.pem https://127.0.0.1:7070/health; }
    for i in $(seq 60); do health >/dev/null 2>&1 && break; sleep 1; done
    health >/dev/null'
}
install_guest a & pid_install_a=$!
install_guest b & pid_install_b=$!
for x in a b; do
  pid_var="pid_install_$x"
  wait "${!pid_var}" || fail "guest $x: ferry could not be installed"
done
for pair in "a b" "b a"; do
  set -- $pair
  if start_agent "$1" "$2"; then ok "guest $1: ferry $(g "$1" ferry --version), trusts guest $2, agent active under systemd ($(g "$1" systemctl is-active ferry-serve))"
  else fail "guest $1: its agent could not be started"; g "$1" journalctl -u ferry-serve --no-pager -n 20 || true; fi
done
timing "install ferry + start agents" "$((SECONDS - t)) s"
[ ${#failures[@]} -eq 0 ] || exit 1

# --- 4. workload images: built once in A, the same tar loaded into B ------------
say "workload images (ferry-workload, ferry-redis) with the same ids on A and B"
t=$SECONDS
put a "$counter" /tmp/counter
g a 'set -e
  root=$(mktemp -d); mkdir -p $root/tmp; chmod 1777 $root/tmp
  cp /tmp/counter $root/counter
  echo "this file is deleted by the counter at start" > $root/ferry-delete-me
  tar -C $root --numeric-owner -c . | docker import --change "CMD [\"/counter\"]" - ferry-workload:latest >/dev/null
  rm -rf $root
  root=$(mktemp -d); mkdir -p $root/tmp $root/etc $root/data $root/usr/bin; chmod 1777 $root/tmp
  cp /usr/bin/redis-server $root/usr/bin/
  for lib in $(ldd /usr/bin/redis-server | grep -o "/[^ ]*"); do mkdir -p $root$(dirname $lib); cp -L $lib $root$lib; done
  echo "root:x:0:0:root:/root:/bin/sh" > $root/etc/passwd; echo "root:x:0:" > $root/etc/group
  tar -C $root --numeric-owner -c . | docker import --change "WORKDIR /data" --change "EXPOSE 6379" \
    --change "CMD [\"/usr/bin/redis-server\",\"--protected-mode\",\"no\",\"--save\",\"\",\"--appendonly\",\"no\",\"--bind\",\"0.0.0.0\",\"--enable-debug-command\",\"yes\"]" \
    - ferry-redis:latest >/dev/null
  rm -rf $root
  docker save ferry-workload:latest ferry-redis:latest > /tmp/field-images.tar'
g a cat /tmp/field-images.tar | g b 'docker load -q >/dev/null'
for img in ferry-workload:latest ferry-redis:latest; do
  ia="$(g a docker image inspect -f '{{.Id}}' "$img")"; ib="$(g b docker image inspect -f '{{.Id}}' "$img" 2>/dev/null)"
  if [ -n "$ia" ] && [ "$ia" = "$ib" ]; then ok "$img ${ia:7:12} on both"; else fail "$img ids differ: A '$ia' B '$ib'"; fi
done
timing "build + ship workload images" "$((SECONDS - t)) s"
[ ${#failures[@]} -eq 0 ] || exit 1

# --- 5. ferry doctor ------------------------------------------------------------
for x in a b; do
  say "ferry doctor on $x"
  if g "$x" ferry doctor; then ok "doctor on $x"; else fail "ferry doctor on $x"; fi
  g "$x" 'echo "cgroup driver: $(docker info -f "{{.CgroupDriver}}") (cgroup v$(docker info -f "{{.CgroupVersion}}")), runc $(runc --version | head -1 | cut -d" " -f3), $(criu --version | head -1)"'
done

# --- helpers for the counter ------------------------------------------------------
# last_count X NAME / wait_count_above X NAME N / memory_check X NAME
last_count() { g "$1" "docker logs $2 2>&1 | grep -o 'count=[0-9]*' | tail -1 | cut -d= -f2"; }
wait_count_above() {
  local c
  for _ in $(seq 60); do
    c="$(last_count "$1" "$2")"
    [ -n "$c" ] && [ "$c" -gt "$3" ] && { echo "$c"; return 0; }
    sleep 1
  done
  return 1
}
memory_check() {
  g "$1" "docker kill -s USR1 $2 >/dev/null; for i in \$(seq 60); do l=\$(docker logs $2 2>&1 | grep -o 'check=[0-9a-f]*' | tail -1); [ -n \"\$l\" ] && { echo \${l#check=}; exit 0; }; sleep 1; done; exit 1"
}
# Where the container's process lives, against where Docker put the container:
# prints "ok" or the two cgroups (issue 10: a restored process stays in the
# source container's cgroup on cgroup v2).
cgroup_check() {
  g "$1" "id=\$(docker inspect -f '{{.Id}}' $2); pid=\$(docker inspect -f '{{.State.Pid}}' $2)
    cg=\$(sed -n 's/^0:://p' /proc/\$pid/cgroup)
    case \$(docker info -f '{{.CgroupDriver}}') in systemd) want=/system.slice/docker-\$id.scope ;; *) want=/docker/\$id ;; esac
    mem=\$(cat /sys/fs/cgroup\$cg/memory.max 2>/dev/null); cur=\$(cat /sys/fs/cgroup\$cg/memory.current 2>/dev/null)
    newprocs=\$(cat /sys/fs/cgroup\$want/cgroup.procs 2>/dev/null | wc -l)
    if [ \"\$cg\" = \"\$want\" ]; then echo \"ok \$cg memory.max=\$mem memory.current=\$cur\"
    else echo \"process in \$cg (memory.max=\$mem memory.current=\$cur); its container's cgroup \$want holds \$newprocs processes\"; fi"
}
# The process's AppArmor profile (without its mode) and the errno keyctl gets
# in it (the counter calls it on SIGUSR2; Docker's seccomp profile refuses it: 1).
confinement_check() {
  g "$1" "pid=\$(docker inspect -f '{{.State.Pid}}' $2); label=\$(tr -d '\\0' </proc/\$pid/attr/current | cut -d' ' -f1)
    docker kill -s USR2 $2 >/dev/null
    for i in \$(seq 30); do l=\$(docker logs $2 2>&1 | grep -o 'keyctl_errno=[0-9]*' | tail -1); [ -n \"\$l\" ] && break; sleep 1; done
    echo \"\$label \$l\""
}
# hop FROM TO NAME: ferry migrate, then the app's checks on TO.
hop() {
  local from="$1" to="$2" name="$3" label before out rc line after check cg
  label="$name $(echo "$from" | tr a-z A-Z) -> $(echo "$to" | tr a-z A-Z)"
  before="$(last_count "$from" "$name")"
  out="$(g "$from" ferry migrate "$name" --to "$(peer_addr "$to")" $FERRY_ARGS 2>&1)"; rc=$?
  line="$(printf '%s\n' "$out" | grep '^migrated ' | tail -1)"
  if [ $rc -ne 0 ]; then
    printf '%s\n' "$out" | tail -8 | sed 's/^/      | /'
    local still src; still="$(g "$from" docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)"
    src="$(cgroup_check "$from" "$name")"
    if [ "${src%% *}" != ok ] && printf '%s' "$out" | grep -q 'cgroup.freeze\|Unseizable'; then
      fail "$label: ferry migrate exited $rc: the app, restored here by the previous hop, cannot be checkpointed again (the cgroup v2 bug of issue 10 is back)"
      known+=("$label: migrate exits $rc; the source's $src")
    else
      fail "$label: ferry migrate exited $rc"
    fi
    echo "      the app still runs on $(echo "$from" | tr a-z A-Z): ${still:-no}"
    return 1
  fi
  echo "      $label (emulated): $(printf '%s' "$line" | sed -n 's/.*: save \([^,]*\), transfer \([^,]*\), resume \([^,]*\), downtime \([^,]*\), \(.*\)/Save \1, Transfer \2, Resume \3, Downtime \4, \5/p')"
  timing "hop $label (emulated)" "$(printf '%s' "$line" | sed -n 's/.*: \(save.*downtime [^,]*\).*/\1/p')"
  if after="$(wait_count_above "$to" "$name" "$before")"; then ok "$label: the counter carries on ($before on the source, $after now)"
  else fail "$label: the counter does not count on $(echo "$to" | tr a-z A-Z) (was $before): $(g "$to" docker logs --tail 3 "$name" 2>&1 | tr '\n' ' ')"; return 1; fi
  if check="$(memory_check "$to" "$name")" && [ "$check" = "$SUM" ]; then ok "$label: memory checksum $check unchanged"
  else fail "$label: memory checksum '$check', want $SUM"; fi
  cg="$(cgroup_check "$to" "$name")"
  if [ "${cg%% *}" = ok ]; then ok "$label: the process is in its container's cgroup (${cg#ok })"
  else fail "$label: $cg (the cgroup v2 bug of issue 10 is back)"; known+=("$label: $cg"); fi
  # Issue 11: confined as a container created here is, whatever the images said.
  local conf; conf="$(confinement_check "$to" "$name")"
  case "$conf" in
    "docker-default keyctl_errno=1") ok "$label: AppArmor docker-default and the default seccomp profile (keyctl refused)" ;;
    *) fail "$label: the restored process runs under '$conf', not docker-default with keyctl refused" ;;
  esac
}

# --- 6. counter A -> B -> A -> B ------------------------------------------------
say "counter ($MIB MiB, docker run -m 128m --cpus 1) migrated A -> B -> A -> B"
g a "docker rm -f $NAME >/dev/null 2>&1; docker run -d --name $NAME -m 128m --cpus 1 ferry-workload:latest /counter $MIB 100 >/dev/null"
SUM="$(g a "for i in \$(seq 60); do l=\$(docker logs $NAME 2>&1 | grep -o 'sum=[0-9a-f]*' | head -1); [ -n \"\$l\" ] && { echo \${l#sum=}; exit 0; }; sleep 1; done")"
wait_count_above a "$NAME" 5 >/dev/null
echo "      counter on A: sum=$SUM, count=$(last_count a "$NAME")"
at=a
for to in b a b; do
  if hop "$at" "$to" "$NAME"; then at="$to"; else
    echo "      the remaining hops of the counter are skipped"
    break
  fi
done
if [ "$at" = b ] && [ ${#failures[@]} -gt 0 ]; then
  # Evidence for issue 10 on the engine that holds the restored container.
  echo "      B: /proc/<pid>/cgroup of the restored counter: $(g b "cat /proc/\$(docker inspect -f '{{.State.Pid}}' $NAME)/cgroup")"
fi
g a "docker rm -f $NAME >/dev/null 2>&1"; g b "docker rm -f $NAME >/dev/null 2>&1"

# --- 7. redis with data ---------------------------------------------------------
say "redis migrated A -> B with its data"
redis_cli() { g "$1" "redis-cli -h \$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' field-redis) $2"; }
g a "docker rm -f field-redis >/dev/null 2>&1; docker run -d --name field-redis -m 128m --cpus 1 ferry-redis:latest >/dev/null"
for _ in $(seq 30); do [ "$(redis_cli a PING 2>/dev/null)" = PONG ] && break; sleep 1; done
redis_cli a "DEBUG POPULATE 20000 field 64" >/dev/null
redis_cli a "SET field:marker carried-$RANDOM" >/dev/null
digest_a="$(redis_cli a "DEBUG DIGEST")"; keys_a="$(redis_cli a DBSIZE)"; marker_a="$(redis_cli a "GET field:marker")"
echo "      redis on A: $keys_a keys, digest $digest_a, field:marker=$marker_a"
rout="$(g a ferry migrate field-redis --to "$(peer_addr b)" $FERRY_ARGS 2>&1)"; rc=$?
if [ $rc -eq 0 ]; then
  line="$(printf '%s\n' "$rout" | grep '^migrated ' | tail -1)"
  echo "      redis A -> B (emulated): $(printf '%s' "$line" | sed -n 's/.*: save \([^,]*\), transfer \([^,]*\), resume \([^,]*\), downtime \([^,]*\), \(.*\)/Save \1, Transfer \2, Resume \3, Downtime \4, \5/p')"
  timing "hop redis A -> B (emulated)" "$(printf '%s' "$line" | sed -n 's/.*: \(save.*downtime [^,]*\).*/\1/p')"
  for _ in $(seq 30); do [ "$(redis_cli b PING 2>/dev/null)" = PONG ] && break; sleep 1; done
  digest_b="$(redis_cli b "DEBUG DIGEST")"; keys_b="$(redis_cli b DBSIZE)"; marker_b="$(redis_cli b "GET field:marker")"
  echo "      redis on B: $keys_b keys, digest $digest_b, field:marker=$marker_b"
  if [ -n "$digest_a" ] && [ "$digest_a" = "$digest_b" ] && [ "$keys_a" = "$keys_b" ] && [ "$marker_a" = "$marker_b" ]; then
    ok "redis A -> B: DEBUG DIGEST, key count and marker equal"
  else fail "redis A -> B: data differs (A: $keys_a $digest_a $marker_a; B: $keys_b $digest_b $marker_b)"; fi
  cg="$(cgroup_check b field-redis)"
  if [ "${cg%% *}" = ok ]; then ok "redis on B is in its container's cgroup (${cg#ok })"
  else fail "redis A -> B: $cg (the cgroup v2 bug of issue 10 is back)"; known+=("redis A -> B: $cg"); fi
else
  printf '%s\n' "$rout" | tail -8 | sed 's/^/      | /'
  fail "redis A -> B: ferry migrate exited $rc"
fi
g b "docker rm -f field-redis >/dev/null 2>&1"; g a "docker rm -f field-redis >/dev/null 2>&1"

# --- 8. replicate A -> B, kill guest A, fail over on B -----------------------------
say "ferry replicate A -> B, then guest A's qemu killed, ferry failover on B"
RNAME=field-replicated
EVERY="${FIELD_EVERY:-10s}"
g a "docker rm -f $RNAME >/dev/null 2>&1; docker run -d --name $RNAME -m 128m --cpus 1 ferry-workload:latest /counter $MIB 100 >/dev/null"
SUM="$(g a "for i in \$(seq 60); do l=\$(docker logs $RNAME 2>&1 | grep -o 'sum=[0-9a-f]*' | head -1); [ -n \"\$l\" ] && { echo \${l#sum=}; exit 0; }; sleep 1; done")"
wait_count_above a "$RNAME" 5 >/dev/null
g a "setsid nohup ferry replicate $RNAME --to $(peer_addr b) --every $EVERY --keep 3 $FERRY_ARGS --self $(peer_addr a) >/var/log/ferry-replicate.log 2>&1 < /dev/null &"
snaps=0
for _ in $(seq 120); do
  snaps="$(g b "ferry snapshots 2>/dev/null | grep -c '^$RNAME@'")"
  [ "${snaps:-0}" -ge 2 ] && break
  sleep 2
done
if [ "${snaps:-0}" -ge 2 ]; then ok "B stores $snaps verified snapshots of $RNAME"
else fail "B never stored 2 snapshots of $RNAME: $(g a tail -5 /var/log/ferry-replicate.log | tr '\n' ' ')"; fi
g a "grep -i 'snapshot\|frozen' /var/log/ferry-replicate.log | tail -2" | sed 's/^/      A: /'
last_a="$(last_count a "$RNAME")"
pid_a="$(guest_pid a)"
kill -KILL "$pid_a"
echo "      killed guest A's qemu (pid $pid_a) at count=$last_a"
t=$SECONDS
fout="$(g b ferry failover "$RNAME" --board edge-128m 2>&1)"; rc=$?
printf '%s\n' "$fout" | tail -3 | sed 's/^/      B: /'
if [ $rc -eq 0 ]; then
  timing "failover on B (emulated)" "$((SECONDS - t)) s"
  if first="$(wait_count_above b "$RNAME" 0)"; then ok "failover: the counter runs on B (count=$first, A was at $last_a)"
  else fail "failover: the counter does not count on B"; fi
  if check="$(memory_check b "$RNAME")" && [ "$check" = "$SUM" ]; then ok "failover: memory checksum $check unchanged"
  else fail "failover: memory checksum '$check', want $SUM"; fi
  g b "docker inspect -f 'board caps on B: Memory={{.HostConfig.Memory}} NanoCpus={{.HostConfig.NanoCpus}}' $RNAME"
  cg="$(cgroup_check b "$RNAME")"
  if [ "${cg%% *}" = ok ]; then ok "failover: the process is in its container's cgroup (${cg#ok })"
  else fail "failover: $cg (the cgroup v2 bug of issue 10 is back)"; known+=("failover on B: $cg"); fi
else
  fail "ferry failover on B exited $rc"
fi

# --- summary ------------------------------------------------------------------------
say "timings (qemu TCG emulation on this host, not a board's)"
timing "total field test" "$((SECONDS - t_start)) s"
printf '  %s\n' "${timings[@]}"
if [ ${#known[@]} -gt 0 ]; then
  say "regression of issue 10 (cgroup v2): a restored process in the source container's cgroup"
  printf '  %s\n' "${known[@]}"
fi
if [ ${#failures[@]} -gt 0 ]; then
  say "field test FAILED (${#failures[@]})"
  printf '  %s\n' "${failures[@]}"
  exit 1
fi
say "field test passed"
