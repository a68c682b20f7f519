# Shared by the field-test scripts (sourced). Two arm64 guests, A and B, under
# qemu-system-aarch64 with user-mode networking; each forwards ssh and the
# ferry agent to 127.0.0.1 on the host. From inside a guest the host (and so
# the other guest's forwarded agent port) is 10.0.2.2.
FIELD_CACHE="${FIELD_CACHE:-/var/cache/ferry-field}"
FIELD_RUN="${FIELD_RUN:-$FIELD_CACHE/run}"
FIELD_MEM="${FIELD_MEM:-1024}"
FIELD_SSH_BASE="${FIELD_SSH_BASE:-10022}"      # A: 10022, B: 10023
FIELD_AGENT_BASE="${FIELD_AGENT_BASE:-17070}"  # A: 17070, B: 17071
FIELD_GUESTS=(a b)
AGENT_GUEST_PORT=7070   # what boards/ferry-serve.service listens on

field_index() { case "$1" in a|A) echo 0 ;; b|B) echo 1 ;; *) echo "unknown guest '$1'" >&2; return 2 ;; esac; }
ssh_port() { echo $((FIELD_SSH_BASE + $(field_index "$1"))); }
agent_port() { echo $((FIELD_AGENT_BASE + $(field_index "$1"))); }
# The address guest X's agent has as seen from the other guest.
peer_addr() { echo "10.0.2.2:$(agent_port "$1")"; }

SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o ConnectTimeout=10 -o ServerAliveInterval=15 -o ServerAliveCountMax=8 -o BatchMode=yes)
# g X CMD…  runs CMD (a shell string) as root in guest X.
g() {
  local who="$1"; shift
  ssh "${SSH_OPTS[@]}" -i "$FIELD_CACHE/id_ed25519" -p "$(ssh_port "$who")" root@127.0.0.1 "$@"
}
# put X LOCAL REMOTE  copies one file into guest X.
put() {
  scp -q "${SSH_OPTS[@]}" -i "$FIELD_CACHE/id_ed25519" -P "$(ssh_port "$1")" "$2" "root@127.0.0.1:$3"
}
pidfile() { echo "$FIELD_RUN/guest-$1.pid"; }
# The qemu PID of guest X if it runs (checked against its own overlay path, so a
# recycled PID is never taken for it).
guest_pid() {
  local f pid
  f="$(pidfile "$1")"
  [ -s "$f" ] || return 1
  pid="$(cat "$f")"
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$FIELD_RUN/guest-$1.qcow2" || return 1
  echo "$pid"
}
