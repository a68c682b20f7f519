#!/usr/bin/env bash
# A shaped link between this host and engine B's network namespace, for
# `make bench-migrate LINK=RATE:DELAY` (issue 13).
#
#   link.sh up RATE DELAY    e.g. link.sh up 100mbit 5ms   (idempotent: replaces a link that is up)
#   link.sh down             (idempotent)
#   link.sh status
#
# Host side ferry-vb0 10.199.0.1/30, B side ferry-vb1 10.199.0.2/30. Both
# directions are shaped alike: RATE by a tbf qdisc on each end (the kernel's
# own shaping), and DELAY one way, so a round trip takes 2×DELAY. This kernel
# has no netem (CONFIG_NET_SCH_NETEM is not set), so the delay comes from
# link-delay.py: the two ends are TUN devices and it holds each packet for
# DELAY before passing it on. The devices live as long as that process; `down`
# stops it by the PID in its pidfile and removes anything left.
#
# B's namespace is that of /run/dockerb.pid's process; LINK_NETNS=PATH names
# another one (e.g. /proc/PID/ns/net of a scratch `unshare --net`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

HOST_DEV=ferry-vb0
PEER_DEV=ferry-vb1
HOST_ADDR=10.199.0.1/30
PEER_ADDR=10.199.0.2/30
PIDFILE=/run/ferry-link.pid
log() { printf 'link: %s\n' "$*" >&2; }

netns() {
  if [ -n "${LINK_NETNS:-}" ]; then echo "$LINK_NETNS"; return; fi
  [ -s /run/dockerb.pid ] || { log "engine B is not running (no /run/dockerb.pid)"; exit 1; }
  echo "/proc/$(cat /run/dockerb.pid)/ns/net"
}
in_b() { nsenter --net="$(netns)" -- "$@"; }

# tc takes a delay for tbf's queue bound; link-delay.py wants milliseconds.
delay_ms() {
  case "$1" in
    *us) awk -v v="${1%us}" 'BEGIN { print v / 1000 }' ;;
    *ms) echo "${1%ms}" ;;
    *s) awk -v v="${1%s}" 'BEGIN { print v * 1000 }' ;;
    *) log "delay '$1': give a unit, e.g. 5ms"; exit 2 ;;
  esac
}

# tbf: a 64 KiB burst; the queue holds 100 ms of traffic, about what netem's
# default 1000-packet limit holds at 100mbit.
TBF=(burst 64kb latency 100ms)

down() {
  if [ -s "$PIDFILE" ]; then
    local pid; pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" || true
    fi
    rm -f "$PIDFILE"
  fi
  rm -f /run/ferry-link.log
  # A device left by an older run (e.g. a veth): remove it by its name.
  ip link del "$HOST_DEV" 2>/dev/null || true
  if [ -n "${LINK_NETNS:-}" ] || [ -s /run/dockerb.pid ]; then
    in_b ip link del "$PEER_DEV" 2>/dev/null || true
  fi
}

up() {
  local rate="$1" delay="$2" ns
  ns="$(netns)"
  down
  local ready; ready="$(mktemp -u /run/ferry-link.ready.XXXXXX)"
  setsid python3 "$here/link-delay.py" "$ns" "$(delay_ms "$delay")" "$HOST_DEV" "$PEER_DEV" "$ready" </dev/null >/dev/null 2>/run/ferry-link.log &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 50); do [ -s "$ready" ] && break; sleep 0.1; done
  if [ ! -s "$ready" ]; then
    log "link-delay.py did not start:"; cat /run/ferry-link.log >&2; down; exit 1
  fi
  rm -f "$ready"
  ip addr add "$HOST_ADDR" dev "$HOST_DEV"
  ip link set "$HOST_DEV" up
  tc qdisc replace dev "$HOST_DEV" root tbf rate "$rate" "${TBF[@]}"
  in_b ip addr add "$PEER_ADDR" dev "$PEER_DEV"
  in_b ip link set "$PEER_DEV" up
  in_b tc qdisc replace dev "$PEER_DEV" root tbf rate "$rate" "${TBF[@]}"
  log "up: ${HOST_ADDR%/*} ⇄ ${PEER_ADDR%/*}, $rate each way, $delay one way"
}

status() {
  ip -brief addr show dev "$HOST_DEV" 2>/dev/null || { echo "link: down"; return 1; }
  tc qdisc show dev "$HOST_DEV"
  in_b tc qdisc show dev "$PEER_DEV"
}

case "${1:-}" in
  up) [ $# -eq 3 ] || { log "usage: link.sh up RATE DELAY (e.g. 100mbit 5ms)"; exit 2; }; up "$2" "$3" ;;
  down) down ;;
  status) status ;;
  *) log "usage: link.sh up RATE DELAY | down | status"; exit 2 ;;
esac
