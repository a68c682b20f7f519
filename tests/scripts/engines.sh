#!/usr/bin/env bash
# Two Docker engines on one machine, standing in for two hosts.
#
#   engines.sh start|stop|status [a|b|all]     (default: all)
#
# Engine A is the ordinary one: /var/run/docker.sock, data in /var/lib/docker.
# Engine B runs in its own mount and network namespace, with its own data and
# exec roots bind-mounted over the standard paths, so that CRIU on B sees what
# a real second host would (with a different --data-root in one namespace,
# CRIU's restore fails: "mnt-v2: Failed to copy sharing"). B's socket is
# /run/dockerb.sock. B's ferry agent must run inside B's mount namespace, on a
# loopback address:
#   nsenter --mount=/proc/$(cat /run/dockerb.pid)/ns/mnt -- ferry serve --listen 127.0.0.1:PORT …
# Never give B `--bridge none`: it deletes A's docker0.
# Engines are stopped by the PID in their pidfile, never by name.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
log() { printf 'engines: %s\n' "$*" >&2; }

# runc inherits dockerd's PATH and finds criu on it: our wrapper comes first.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

socket_of() { case "$1" in a) echo /var/run/docker.sock ;; b) echo /run/dockerb.sock ;; esac; }
pidfile_of() { case "$1" in a) echo /run/docker.pid ;; b) echo /run/dockerb.pid ;; esac; }
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
    b)
      mkdir -p /var/lib/dockerb /run/dockerb /var/lib/docker /run/docker
      setsid unshare --mount --net --propagation private sh -c \
        'mount --bind /var/lib/dockerb /var/lib/docker && mount --bind /run/dockerb /run/docker && ip link set lo up && exec dockerd -H unix:///run/dockerb.sock --pidfile /run/dockerb.pid' \
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
  local ctrd_pidfile=/run/docker/containerd/containerd.pid
  [ "$engine" = b ] && ctrd_pidfile=/run/dockerb/containerd/containerd.pid
  if [ -s "$ctrd_pidfile" ] && kill -0 "$(cat "$ctrd_pidfile")" 2>/dev/null; then
    sleep 1
    kill -0 "$(cat "$ctrd_pidfile")" 2>/dev/null && kill -TERM "$(cat "$ctrd_pidfile")" || true
  fi
  rm -f "$(pidfile_of "$engine")"
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
  all) engines=(a b) ;;
  a|b) engines=("$which") ;;
  *) log "unknown engine '$which': use a, b or all"; exit 2 ;;
esac
rc=0
for engine in "${engines[@]}"; do
  case "$action" in
    start) start "$engine" ;;
    stop) stop "$engine" ;;
    status) status "$engine" || rc=1 ;;
    *) log "unknown action '$action': use start, stop or status"; exit 2 ;;
  esac
done
exit $rc
