#!/usr/bin/env bash
# Three Docker engines on one machine, standing in for three hosts.
#
#   engines.sh start|stop|status|kill [a|b|c|all]     (default: all = a b c)
#
# Engine A is the ordinary one: /var/run/docker.sock, data in /var/lib/docker.
# Engines B and C each run in their own mount and network namespace, with
# their own data and exec roots (/var/lib/dockerX, /run/dockerX) bind-mounted
# over the standard paths, so that CRIU there sees what a real second host
# would (with a different --data-root in one namespace, CRIU's restore fails:
# "mnt-v2: Failed to copy sharing"). Their sockets are /run/dockerb.sock and
# /run/dockerc.sock, their pids in /run/dockerb.pid and /run/dockerc.pid. Their
# ferry agents must run inside their mount namespace, on a loopback address:
#   nsenter --mount=/proc/$(cat /run/dockerb.pid)/ns/mnt -- ferry serve --listen 127.0.0.1:PORT …
# Never give B or C `--bridge none`: it deletes A's docker0.
# Engines are stopped by the PID in their pidfile, never by name.
#
# `kill b|c` is a host death, not a stop: every process in that engine's
# mount namespace (dockerd, containerd, shims, a ferry agent run there by
# nsenter) and every descendant of those (the containers' processes, which
# have mount namespaces of their own) gets SIGKILL, and the engine's /run is
# emptied as a reboot would (it is a tmpfs on a real host). The data root
# stays. A later `start` brings the engine up clean: dockerd finds the
# containers that were running dead, marks them exited, and removes the ones
# made with --rm. A cannot be killed this way: its mount namespace is the
# machine's own.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
log() { printf 'engines: %s\n' "$*" >&2; }

# runc inherits dockerd's PATH and finds criu on it: our wrapper comes first.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

socket_of() { case "$1" in a) echo /var/run/docker.sock ;; *) echo "/run/docker$1.sock" ;; esac; }
pidfile_of() { case "$1" in a) echo /run/docker.pid ;; *) echo "/run/docker$1.pid" ;; esac; }
# The engine's exec root as seen from this namespace (/run/docker inside its own).
run_dir_of() { case "$1" in a) echo /run/docker ;; *) echo "/run/docker$1" ;; esac; }
logfile_of() { echo "/var/log/ferry-dockerd-$1.log"; }

answers() { docker -H "unix://$(socket_of "$1")" version >/dev/null 2>&1; }

live_pid() {
  local pidfile; pidfile="$(pidfile_of "$1")"
  [ -s "$pidfile" ] || return 1
  local pid; pid="$(cat "$pidfile")"
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
  local engine="$1"
  if live_pid "$engine" >/dev/null && answers "$engine"; then
    return 0
  fi
  local logfile; logfile="$(logfile_of "$engine")"
  log "starting engine $engine (log: $logfile)"
  case "$engine" in
    a)
      setsid dockerd -H unix:///var/run/docker.sock --pidfile /run/docker.pid >"$logfile" 2>&1 </dev/null &
      ;;
    b|c)
      mkdir -p "/var/lib/docker$engine" "/run/docker$engine" /var/lib/docker /run/docker
      setsid unshare --mount --net --propagation private sh -c \
        "mount --bind /var/lib/docker$engine /var/lib/docker && mount --bind /run/docker$engine /run/docker && ip link set lo up && exec dockerd -H unix:///run/docker$engine.sock --pidfile /run/docker$engine.pid" \
        >"$logfile" 2>&1 </dev/null &
      ;;
  esac
  for _ in $(seq 1 600); do
    answers "$engine" && break
    sleep 0.1
  done
  if ! answers "$engine"; then
    log "engine $engine did not come up; end of its log:"
    tail -n 30 "$logfile" >&2
    exit 1
  fi
  bash "$here/workload/build-images.sh" "$(socket_of "$engine")"
}

stop() {
  local engine="$1" pid
  pid="$(live_pid "$engine")" || { log "engine $engine is not running"; return 0; }
  # A shaped link into B's namespace (link.sh) must not outlive B.
  [ "$engine" = b ] && bash "$here/link.sh" down
  log "stopping engine $engine (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "engine $engine ignored SIGTERM for 20 s: killing it"
    kill -KILL "$pid" || true
  fi
  # dockerd stops the containerd it started; a wedged one is killed by its pidfile.
  local ctrd_pidfile; ctrd_pidfile="$(run_dir_of "$engine")/containerd/containerd.pid"
  if [ -s "$ctrd_pidfile" ] && kill -0 "$(cat "$ctrd_pidfile")" 2>/dev/null; then
    sleep 1
    kill -0 "$(cat "$ctrd_pidfile")" 2>/dev/null && kill -TERM "$(cat "$ctrd_pidfile")" || true
  fi
  rm -f "$(pidfile_of "$engine")"
}

# PIDs whose parent is one of the PIDs given (one a line on stdin). Processes
# come and go while /proc is read: a vanished one is no error. The parent is
# the second field after the command name, which may hold spaces and parens.
children_of() {
  local parents; parents="$(cat)"
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } |
    awk -v parents="$parents" '
      BEGIN { n = split(parents, list, "\n"); for (i = 1; i <= n; i++) parent[list[i]] = 1 }
      { rest = $0; sub(/^.*\) /, "", rest); split(rest, field, " "); if (field[2] in parent) print $1 }'
}

# The mount namespace of engine $1 (b or c): its dockerd's, else (dockerd
# gone) its containerd's.
namespace_of() {
  local pid
  for pidfile in "$(pidfile_of "$1")" "$(run_dir_of "$1")/containerd/containerd.pid"; do
    [ -s "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    readlink "/proc/$pid/ns/mnt" 2>/dev/null && return 0
  done
  return 1
}

kill_host() {
  local engine="$1" ns
  [ "$engine" = a ] && { log "engine a is this machine's own namespace: it can be stopped, not killed"; exit 2; }
  ns="$(namespace_of "$engine")" || { log "engine $engine is not running"; rm -f "$(pidfile_of "$engine")"; return 0; }
  [ "$ns" = "$(readlink /proc/self/ns/mnt)" ] && { log "engine $engine shares this namespace: refusing to kill it"; exit 1; }
  [ "$engine" = b ] && bash "$here/link.sh" down
  log "killing host $engine (every process in $ns and their descendants)"
  # Stop first, then kill: a stopped process cannot fork a child we would miss.
  # Rounds until no new process turns up (a fork in flight while we looked).
  local found pid
  # Whatever happens from here, nothing is left stopped: a stopped engine
  # hangs every client of its socket.
  victims=""
  trap 'kill -KILL $victims 2>/dev/null || true' EXIT
  for _ in $(seq 1 20); do
    found="$(
      { stat -L -c '%i %n' /proc/[0-9]*/ns/mnt 2>/dev/null || true; } |
        awk -v ns="$ns" '"mnt:[" $1 "]" == ns { split($2, part, "/"); print part[3] }'
      if [ -n "$victims" ]; then printf '%s\n' $victims | children_of; fi
    )"
    found="$(printf '%s\n' $found $victims | sort -un)"
    [ "$found" = "$victims" ] && break
    victims="$found"
    # shellcheck disable=SC2086
    kill -STOP $victims 2>/dev/null || true
  done
  # shellcheck disable=SC2086
  kill -KILL $victims 2>/dev/null || true
  trap - EXIT
  for pid in $victims; do
    for _ in $(seq 1 100); do
      [ -e "/proc/$pid" ] && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || break
      sleep 0.05
    done
  done
  log "killed $(echo $victims | wc -w) processes of engine $engine"
  # What a reboot loses: the engine's /run (a tmpfs on a real host), its socket and pidfile.
  find "$(run_dir_of "$engine")" -mindepth 1 -delete 2>/dev/null || rm -rf "$(run_dir_of "$engine")"/* || true
  rm -f "$(pidfile_of "$engine")" "$(socket_of "$engine")"
}

status() {
  local engine="$1"
  if answers "$engine"; then
    echo "engine $engine: up at $(socket_of "$engine")"
  else
    echo "engine $engine: down"
    return 1
  fi
}

action="${1:-status}"
which="${2:-all}"
case "$which" in
  all) engines=(a b c) ;;
  a|b|c) engines=("$which") ;;
  *) log "unknown engine '$which': use a, b, c or all"; exit 2 ;;
esac
rc=0
for engine in "${engines[@]}"; do
  case "$action" in
    start) start "$engine" ;;
    stop) stop "$engine" ;;
    status) status "$engine" || rc=1 ;;
    kill) kill_host "$engine" ;;
    *) log "unknown action '$action': use start, stop, status or kill"; exit 2 ;;
  esac
done
exit $rc
