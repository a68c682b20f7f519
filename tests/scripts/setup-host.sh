#!/usr/bin/env bash
# Installs what ferry's tests and demo need on a bare Debian bookworm host
# (amd64), idempotently: Docker 20.10 in experimental mode, a CRIU that works
# on this kernel, etcd for the fleet tests, and the tools the tests call. A
# second run only checks.
#
# Why CRIU comes from Debian forky, unpacked into a private prefix:
#  - bookworm's criu 3.17 fails on kernels that have [vvar_vclock]
#    ("Unexpected rt vDSO area bounds");
#  - trixie's 4.1.1 cannot dump TCP sockets on Linux >= 6.16, which refuses
#    SO_PASSCRED on inet sockets ("Can't get 1:16 opt");
#  - forky's 4.2 handles both, but needs forky's libc: the whole dependency
#    closure goes into /opt/ferry-criu and a wrapper runs it with that prefix's
#    loader. The host's own libc is never touched.
set -euo pipefail

log() { printf 'setup-host: %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
export DEBIAN_FRONTEND=noninteractive

CRIU_PREFIX=/opt/ferry-criu
CRIU_WRAPPER=/usr/local/sbin/criu
CRIU_WANT=4.2

apt_updated=
apt_update() {
  [ -n "$apt_updated" ] && return 0
  log "apt-get update"
  apt-get update -q >/dev/null
  apt_updated=1
}

# --- Debian packages ------------------------------------------------------
# etcd-server: bookworm's etcd 3.4, whose v3 JSON gateway ferry's fleet speaks
# (tests/fleet.rs starts its own on a loopback port; see "etcd" below).
packages=(docker.io iproute2 redis-server redis-tools file binutils util-linux time gcc libc6-dev python3 etcd-server)
# --bench: Podman too, the stronger peer `make bench-migrate` compares against.
[ "${1:-}" = "--bench" ] && packages+=(podman)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_update
  log "installing ${missing[*]}"
  # No init system here: keep package scripts from starting services.
  policy=/usr/sbin/policy-rc.d
  created_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created_policy=1
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  [ -n "$created_policy" ] && rm -f "$policy"
fi

# --- etcd: the binary only, never the system service -----------------------------
# The fleet tests run their own etcd, each on a free loopback port with a
# throwaway data dir, stopped by PID. The package's service (port 2379, data
# in /var/lib/etcd) would serve no one and hold the port a user's own etcd
# wants: policy-rc.d kept the package from starting it; keep it stopped (a host
# set up before may have run it) and off at boot, under systemd and sysvinit.
if [ -d /run/systemd/system ] && systemctl is-active --quiet etcd 2>/dev/null; then
  log "stopping the system etcd service"; systemctl stop etcd
elif [ -x /etc/init.d/etcd ] && [ ! -d /run/systemd/system ] && /etc/init.d/etcd status >/dev/null 2>&1; then
  log "stopping the system etcd service"; /etc/init.d/etcd stop >/dev/null
fi
if systemctl is-enabled --quiet etcd 2>/dev/null; then
  log "disabling the system etcd service at boot"; systemctl disable --quiet etcd 2>/dev/null
fi
if ls /etc/rc[2345].d/S*etcd >/dev/null 2>&1; then
  log "disabling etcd's init script at boot"; update-rc.d etcd disable >/dev/null 2>&1
fi
# Read whole, then matched: `etcd --version | grep -q` fails under pipefail
# whenever grep exits before etcd has written its last line (SIGPIPE).
etcd_version="$(etcd --version 2>&1)" || true
grep -q '^etcd Version: 3\.' <<<"$etcd_version" || { log "etcd does not run: $(tail -1 <<<"$etcd_version")"; exit 1; }
log "$(head -1 <<<"$etcd_version") — for the fleet tests; its system service is off"

# --- CRIU 4.2 from forky, in a private prefix --------------------------------
criu_ok() {
  [ -x "$CRIU_WRAPPER" ] && "$CRIU_WRAPPER" --version 2>/dev/null | grep -q "Version: $CRIU_WANT"
}
if ! criu_ok; then
  sources=/etc/apt/sources.list.d/ferry-forky.sources
  if [ ! -f "$sources" ]; then
    log "adding Debian forky (amd64, pin priority 50) to apt sources for CRIU only"
    cat >"$sources" <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: forky
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    # Priority 50: nothing is ever installed or upgraded from forky by accident.
    cat >/etc/apt/preferences.d/ferry-forky <<'PIN'
Package: *
Pin: release n=forky
Pin-Priority: 50
PIN
    apt_updated=
  fi
  apt_update
  downloads="$(mktemp -d)"
  chmod 755 "$downloads"
  closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
      --no-replaces --no-enhances --no-pre-depends -t forky criu 2>/dev/null | grep -v '^[ <]' | sort -u)
  log "downloading criu and its libraries from forky: $(echo $closure)"
  (cd "$downloads" && for p in $closure; do echo "$p/forky"; done | xargs apt-get download -q >/dev/null 2>&1)
  rm -rf "$CRIU_PREFIX.new"
  mkdir -p "$CRIU_PREFIX.new"
  for deb in "$downloads"/*.deb; do dpkg -x "$deb" "$CRIU_PREFIX.new"; done
  rm -rf "$downloads" "$CRIU_PREFIX"
  mv "$CRIU_PREFIX.new" "$CRIU_PREFIX"
  libs="$CRIU_PREFIX/usr/lib/x86_64-linux-gnu:$CRIU_PREFIX/lib/x86_64-linux-gnu"
  mkdir -p "$(dirname "$CRIU_WRAPPER")"
  cat >"$CRIU_WRAPPER" <<WRAPPER
#!/bin/sh
# CRIU $CRIU_WANT from Debian forky, run with its own libraries (see ferry's tests/scripts/setup-host.sh).
exec $CRIU_PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path $libs $CRIU_PREFIX/usr/sbin/criu "\$@"
WRAPPER
  chmod 755 "$CRIU_WRAPPER"
  criu_ok || { log "the CRIU wrapper does not run: $("$CRIU_WRAPPER" --version 2>&1 | tail -1)"; exit 1; }
fi
if ! "$CRIU_WRAPPER" check >/dev/null 2>&1; then
  log "criu check fails on this kernel:"; "$CRIU_WRAPPER" check >&2 || true; exit 1
fi
log "$("$CRIU_WRAPPER" --version | head -1 | tr -s ' ') — criu check: looks good"

# --- Docker in experimental mode (checkpoints) --------------------------------
mkdir -p /etc/docker
want='{"experimental": true}'
if [ "$(cat /etc/docker/daemon.json 2>/dev/null)" != "$want" ]; then
  log "writing /etc/docker/daemon.json: $want"
  echo "$want" >/etc/docker/daemon.json
fi
log "host ready"
