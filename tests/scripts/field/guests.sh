#!/usr/bin/env bash
# Boots or stops the two field-test guests (A and B) at once:
#   guests.sh start [a b]   boot from fresh copy-on-write overlays of the cached
#                           image (tests/scripts/field/image.sh), wait for ssh
#   guests.sh stop [a b]    stop them by the PID in their pidfile
#   guests.sh status
# -M virt -cpu cortex-a72 -smp 1, FIELD_MEM MiB each (default 1024), TCG.
# A guest already running is left as it is; stop never looks processes up by name.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/lib.sh"
log() { printf 'field/guests: %s\n' "$*" >&2; }

cmd="${1:-}"; shift || true
who=("$@"); [ ${#who[@]} -gt 0 ] || who=("${FIELD_GUESTS[@]}")

start_one() {
  local x="$1" image="$2" overlay="$FIELD_RUN/guest-$1.qcow2"
  if pid="$(guest_pid "$x")"; then log "guest $x already runs (pid $pid)"; return 0; fi
  rm -f "$overlay" "$(pidfile "$x")"
  qemu-img create -q -f qcow2 -b "$image/base.img" -F raw "$overlay"
  qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 1 -m "$FIELD_MEM" \
    -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
    -append "root=/dev/vda rw console=ttyAMA0 net.ifnames=0 systemd.hostname=field-$x" \
    -drive "if=none,id=hd0,file=$overlay,format=qcow2,cache=unsafe" -device virtio-blk-pci,drive=hd0 \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$(ssh_port "$x")-:22,hostfwd=tcp:127.0.0.1:$(agent_port "$x")-:$AGENT_GUEST_PORT" \
    -device virtio-net-pci,netdev=n0,romfile= -device virtio-rng-pci \
    -display none -monitor none -serial "file:$FIELD_RUN/guest-$x.console" \
    -pidfile "$(pidfile "$x")" -daemonize
  log "guest $x booting: pid $(cat "$(pidfile "$x")"), ssh 127.0.0.1:$(ssh_port "$x"), agent 127.0.0.1:$(agent_port "$x")"
}

wait_ssh() {
  local x="$1" deadline=$((SECONDS + ${FIELD_BOOT_TIMEOUT:-300}))
  until g "$x" true 2>/dev/null; do
    guest_pid "$x" >/dev/null || { log "guest $x died while booting; console:"; tail -20 "$FIELD_RUN/guest-$x.console" >&2; return 1; }
    [ $SECONDS -lt $deadline ] || { log "guest $x: no ssh after ${FIELD_BOOT_TIMEOUT:-300} s; console:"; tail -20 "$FIELD_RUN/guest-$x.console" >&2; return 1; }
    sleep 3
  done
}

stop_one() {
  local x="$1" pid
  if ! pid="$(guest_pid "$x")"; then rm -f "$(pidfile "$x")" "$FIELD_RUN/guest-$x.qcow2"; return 0; fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
  [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$(pidfile "$x")" "$FIELD_RUN/guest-$x.qcow2"
  log "guest $x stopped (pid $pid)"
}

case "$cmd" in
  start)
    image="$("$here/image.sh")"
    mkdir -p "$FIELD_RUN"
    t0=$SECONDS
    for x in "${who[@]}"; do start_one "$x" "$image"; done
    for x in "${who[@]}"; do wait_ssh "$x"; done
    log "ssh answers on ${who[*]} after $((SECONDS - t0)) s"
    ;;
  stop)
    for x in "${who[@]}"; do stop_one "$x"; done
    ;;
  status)
    for x in "${who[@]}"; do
      if pid="$(guest_pid "$x")"; then echo "$x running pid $pid ssh $(ssh_port "$x") agent $(agent_port "$x")"; else echo "$x stopped"; fi
    done
    ;;
  *) echo "usage: guests.sh start|stop|status [a] [b]" >&2; exit 2 ;;
esac
