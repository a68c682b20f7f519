#!/usr/bin/env bash
# ferry's commit mode on an emulated 32-bit ARM (armhf) board:
#   tests/scripts/field/armhf.sh
# Debian has no criu package for armhf, so on a 32-bit board only
# `ferry checkpoint --mode commit` + `ferry restore` can work. This script
#  1. builds (or reuses) a Debian bookworm armhf guest disk with mmdebstrap,
#     cached by a hash of its recipe under $FIELD_CACHE/armhf-<hash>/, and
#     shows from the guest's own apt lists that criu does not exist for armhf;
#  2. boots ONE guest: qemu-system-arm -M virt -cpu cortex-a15 -smp 1, ssh on
#     127.0.0.1:$ARMHF_SSH_PORT (default 10032, apart from the arm64 field
#     test's ports), stopped by its PID when the script exits;
#  3. copies in the static armv7 ferry (target/armv7-unknown-linux-musleabihf,
#     built with cross/build.sh if missing or older than the sources) and runs
#     ferry --version, ferry doctor (criu must FAIL), a criu-mode checkpoint
#     (must fail clearly, container left running), and a commit-mode
#     checkpoint -> remove container and images -> restore of a shell loop
#     built from busybox-static with `docker import` (no registry).
# Runs as root; idempotent; not part of `make test`. Prints timings and
# PASS/FAIL lines; exits non-zero if any check fails. All times are under
# qemu TCG emulation on the host, not a board's.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cd "$repo"
[ "$(id -u)" = 0 ] || { echo "armhf: run as root" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

FIELD_CACHE="${FIELD_CACHE:-/var/cache/ferry-field}"
RUN="${ARMHF_RUN:-$FIELD_CACHE/run-armhf}"
SSH_PORT="${ARMHF_SSH_PORT:-10032}"
MEM="${ARMHF_MEM:-1024}"
BOOT_TIMEOUT="${ARMHF_BOOT_TIMEOUT:-600}"
TRIPLE=armv7-unknown-linux-musleabihf
FERRY_BIN="target/$TRIPLE/release/ferry"
DISK_SIZE=3G
GUEST_PACKAGES=(systemd-sysv udev dbus kmod linux-image-armmp-lpae initramfs-tools
  docker.io apparmor iproute2 ca-certificates openssh-server procps iptables
  ifupdown isc-dhcp-client netbase busybox-static)
# Modules the initramfs needs to mount a virtio root (MODULES=list, as image.sh).
INITRD_MODULES=(virtio_pci virtio_mmio virtio_blk virtio_net ext4)

t_start=$SECONDS
failures=()
timings=()
log() { printf 'armhf: %s\n' "$*" >&2; }
say() { printf '\n== %s\n' "$*"; }
pass() { printf 'PASS  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures+=("$*"); }
timing() { timings+=("$(printf '%-46s %s' "$1" "$2")"); }
indent() { sed 's/^/      | /'; }

# --- host tools and binfmt -------------------------------------------------------
host_packages=(qemu-system-arm qemu-user-static qemu-utils mmdebstrap arch-test binfmt-support e2fsprogs openssh-client curl file)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-arm ] || update-binfmts --enable qemu-arm
[ -e /proc/sys/fs/binfmt_misc/qemu-arm ] || { log "binfmt for qemu-arm is not registered"; exit 1; }

# --- the mirror this host's apt uses (as image.sh) -------------------------------
apt_uri() {  # apt_uri SUITE
  local suite="$1"
  {
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
      [ -f "$f" ] || continue
      awk -v s="$suite" '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1)==s) print $i }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      awk -v s="$suite" '
        /^[[:space:]]*$/ { if (uri != "" && hit) print uri; uri=""; hit=0; next }
        tolower($1)=="uris:" { uri=$2 }
        tolower($1)=="suites:" { for (i=2;i<=NF;i++) if ($i==s) hit=1 }
        END { if (uri != "" && hit) print uri }' "$f"
    done
  } | head -1
}
MIRROR="$(apt_uri bookworm)"
SECURITY="$(apt_uri bookworm-security)"
[ -n "$MIRROR" ] || { log "no apt source serves bookworm on this host"; exit 1; }
# index_ok URI SUITE: the suite's armhf Packages.xz matches its InRelease (a
# mirror caught mid-sync, or a stale cache in front of it, serves one that does
# not, and apt then refuses the whole bootstrap).
index_ok() {
  local want got
  want="$(curl -fsS "$1/dists/$2/InRelease" | awk '/^SHA256:/ {f=1; next} /^[^ ]/ {f=0}
    f && $3 == "main/binary-armhf/Packages.xz" {print $1}')" || return 1
  got="$(curl -fsS "$1/dists/$2/main/binary-armhf/Packages.xz" | sha256sum | cut -d' ' -f1)" || return 1
  [ -n "$want" ] && [ "$want" = "$got" ]
}
SUITES=("$MIRROR bookworm" "$MIRROR bookworm-updates")
[ -n "$SECURITY" ] && SUITES+=("$SECURITY bookworm-security")
SOURCES=()
for s in "${SUITES[@]}"; do
  set -- $s
  if index_ok "$1" "$2"; then
    SOURCES+=("deb $1 $2 main")
  elif [ "$2" = bookworm ]; then
    log "$1 $2: the armhf Packages.xz does not match its InRelease; try again later"; exit 1
  else
    log "WARNING: $1 $2: the armhf Packages.xz does not match its InRelease; building without $2"
  fi
done
set --

# --- 1. the guest image -----------------------------------------------------------
# build_image DIR: rootfs with mmdebstrap, then vmlinuz, initrd.img, base.img and
# criu-armhf.txt (what the guest's apt knows about criu) in DIR.
build_image() {
  local dir="$1" root="$1/rootfs" pubkey modules kver
  pubkey="$(cat "$FIELD_CACHE/id_ed25519.pub")"
  modules="${INITRD_MODULES[*]}"
  mmdebstrap --arch=armhf --variant=minbase --format=directory \
    --include="$(IFS=,; echo "${GUEST_PACKAGES[*]}")" \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
    --essential-hook='echo MODULES=list > "$1/etc/initramfs-tools/conf.d/ferry-field"' \
    --essential-hook="printf '%s\n' $modules > \"\$1/usr/share/initramfs-tools/modules.d/ferry-field\"" \
    --customize-hook='echo ferry-armhf > "$1/etc/hostname"' \
    --customize-hook='echo "/dev/vda / ext4 defaults,noatime 0 1" > "$1/etc/fstab"' \
    --customize-hook='printf "auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n" > "$1/etc/network/interfaces"' \
    --customize-hook='mkdir -p "$1/etc/docker" && echo "{\"experimental\": true}" > "$1/etc/docker/daemon.json"' \
    --customize-hook="mkdir -p -m 700 \"\$1/root/.ssh\" && echo '$pubkey' > \"\$1/root/.ssh/authorized_keys\" && chmod 600 \"\$1/root/.ssh/authorized_keys\"" \
    --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true' \
    --customize-hook="{ echo '\$ dpkg --print-architecture'; chroot \"\$1\" dpkg --print-architecture; echo '\$ apt-cache policy criu'; chroot \"\$1\" apt-cache policy criu 2>&1; echo '\$ grep -c \"^Package: criu\$\" Packages (armhf, all suites)'; cat \"\$1\"/var/lib/apt/lists/*binary-armhf_Packages 2>/dev/null | grep -c '^Package: criu\$' || true; } > '$dir/criu-armhf.txt'" \
    --customize-hook=': > "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"' \
    bookworm "$root" "${SOURCES[@]}" >&2
  kver="$(ls "$root/lib/modules" | sort -V | tail -1)"
  cp "$root/boot/vmlinuz-$kver" "$dir/vmlinuz"
  cp "$root/boot/initrd.img-$kver" "$dir/initrd.img"
  mke2fs -q -t ext4 -L ferry-armhf -d "$root" "$dir/base.img" "$DISK_SIZE"
  rm -rf "$root"
  echo "$kver" >"$dir/kernel-version"
}

say "armhf guest image"
mkdir -p "$FIELD_CACHE" "$RUN"
[ -f "$FIELD_CACHE/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C ferry-field -f "$FIELD_CACHE/id_ed25519"
# The cache key is the recipe only (packages, modules, size, build function,
# mirror): editing the test steps below does not rebuild the image.
hash="$({ echo "${GUEST_PACKAGES[*]}|${INITRD_MODULES[*]}|$DISK_SIZE|${SOURCES[*]}"; declare -f build_image; } | sha256sum | cut -c1-16)"
image="$FIELD_CACHE/armhf-$hash"
t=$SECONDS
if [ -f "$image/done" ]; then
  log "cached guest image $image"
else
  log "building the armhf guest image from: ${SOURCES[*]} (cache $image)"
  rm -rf "$image"; mkdir -p "$image"
  build_image "$image"
  touch "$image/done"
fi
timing "guest image (build or cache check)" "$((SECONDS - t)) s"
pass "guest image $image (kernel $(cat "$image/kernel-version"))"

say "criu for armhf in the Debian archive (the guest's apt lists, $MIRROR)"
indent <"$image/criu-armhf.txt"
if grep -q 'Candidate: (none)' "$image/criu-armhf.txt" || ! grep -q 'Candidate:' "$image/criu-armhf.txt"; then
  pass "criu has no armhf candidate in bookworm: commit mode is the only mode on a 32-bit board"
else
  fail "criu seems installable on armhf (see above): this script's premise is wrong"
fi

# --- 2. the static armv7 ferry ----------------------------------------------------
say "static armv7 ferry"
t=$SECONDS
if [ ! -x "$FERRY_BIN" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$FERRY_BIN" -print -quit)" ]; then
  log "building $FERRY_BIN"
  { bash cross/setup.sh && bash cross/build.sh "$TRIPLE"; } >&2 || { echo "armhf: the armv7 build failed" >&2; exit 1; }
fi
timing "armv7 ferry (build or up to date)" "$((SECONDS - t)) s"
pass "$FERRY_BIN: $(stat -c %s "$FERRY_BIN") bytes, $(file -b "$FERRY_BIN" | cut -d, -f1-2)"

# --- 3. one guest -------------------------------------------------------------------
SSH_OPTS=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o ConnectTimeout=10 -o ServerAliveInterval=15 -o ServerAliveCountMax=8 -o BatchMode=yes)
g() { ssh "${SSH_OPTS[@]}" -i "$FIELD_CACHE/id_ed25519" -p "$SSH_PORT" root@127.0.0.1 "$@"; }
put() { scp -q "${SSH_OPTS[@]}" -i "$FIELD_CACHE/id_ed25519" -P "$SSH_PORT" "$1" "root@127.0.0.1:$2"; }
PIDFILE="$RUN/guest.pid"
OVERLAY="$RUN/guest.qcow2"
CONSOLE="$RUN/guest.console"
# The qemu PID if it runs (checked against its own overlay path: a recycled PID
# is never taken for it).
guest_pid() {
  local pid
  [ -s "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$OVERLAY" || return 1
  echo "$pid"
}
stop_guest() {
  local pid
  if pid="$(guest_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    log "guest stopped (pid $pid)"
  fi
  rm -f "$PIDFILE" "$OVERLAY"
}
trap stop_guest EXIT
trap 'exit 130' INT TERM

say "booting the armhf guest (qemu TCG, -M virt, cortex-a15, 1 vCPU, $MEM MiB)"
stop_guest   # a guest left over by an interrupted run
qemu-img create -q -f qcow2 -b "$image/base.img" -F raw "$OVERLAY"
t=$SECONDS
qemu-system-arm -M virt -cpu cortex-a15 -smp 1 -m "$MEM" \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
  -append "root=/dev/vda rw console=ttyAMA0 net.ifnames=0" \
  -drive "if=none,id=hd0,file=$OVERLAY,format=qcow2,cache=unsafe" -device virtio-blk-pci,drive=hd0 \
  -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22" \
  -device virtio-net-pci,netdev=n0,romfile= -device virtio-rng-pci \
  -display none -monitor none -serial "file:$CONSOLE" \
  -pidfile "$PIDFILE" -daemonize
log "guest booting: pid $(cat "$PIDFILE"), ssh 127.0.0.1:$SSH_PORT, console $CONSOLE"
deadline=$((SECONDS + BOOT_TIMEOUT))
until g true 2>/dev/null; do
  guest_pid >/dev/null || { fail "guest died while booting"; tail -30 "$CONSOLE" | indent; exit 1; }
  [ $SECONDS -lt $deadline ] || { fail "no ssh after $BOOT_TIMEOUT s"; tail -30 "$CONSOLE" | indent; exit 1; }
  sleep 3
done
timing "boot to ssh" "$((SECONDS - t)) s"
pass "guest answers ssh: $(g 'uname -srm; dpkg --print-architecture' | tr '\n' ' ')"

# step NAME CMD: runs CMD (a shell string) in the guest, keeps its output in
# $out and its exit code in $rc, records the time.
out=""; rc=0
step() {
  local name="$1" t0=$SECONDS; shift
  set +e; out="$(g "$@" 2>&1)"; rc=$?; set -e
  timing "$name" "$((SECONDS - t0)) s"
}

# --- 4. ferry in the guest ------------------------------------------------------------
say "ferry --version"
put "$FERRY_BIN" /tmp/ferry && g 'install -m 0755 /tmp/ferry /usr/local/bin/ferry'
step "ferry --version" 'ferry --version'
echo "$out" | indent
[ $rc = 0 ] && pass "ferry --version (exit 0)" || fail "ferry --version exit $rc"

# As a user provisions a board: its key, so its payloads are signed (restore
# refuses an unsigned one, exit 6, unless --accept-untrusted). A host trusts its
# own key; another board would need `ferry trust add` of this fingerprint.
say "ferry keys init"
step "ferry keys init" 'ferry keys show >/dev/null 2>&1 || ferry keys init; ferry keys show'
echo "$out" | indent
[ $rc = 0 ] && pass "ferry keys init/show (exit 0)" || fail "ferry keys init exit $rc"

say "docker in the guest"
step "docker active" 'for i in $(seq 120); do systemctl is-active -q docker && break; sleep 2; done; docker version --format "{{.Server.Version}} {{.Server.Arch}} experimental={{.Server.Experimental}}"; docker info --format "cgroup v{{.CgroupVersion}} driver {{.CgroupDriver}}, security {{.SecurityOptions}}"'
echo "$out" | indent
[ $rc = 0 ] && pass "docker runs in the guest" || { fail "docker is not running (exit $rc)"; exit 1; }

say "ferry doctor (criu must FAIL: Debian has none for armhf)"
step "ferry doctor" 'ferry doctor'
echo "$out" | indent
echo "      exit $rc"
if [ $rc = 1 ] && echo "$out" | grep -Eq '^FAIL +criu '; then
  pass "ferry doctor reports criu FAIL and exits 1"
else
  fail "ferry doctor: expected 'FAIL criu' and exit 1, got exit $rc"
fi
bad="$(echo "$out" | grep -E '^FAIL ' | grep -Ev '^FAIL +criu ' || true)"
[ -z "$bad" ] && pass "ferry doctor: nothing but criu fails" || fail "ferry doctor: other checks fail too: $(echo "$bad" | tr '\n' ';')"

say "a tiny image from local files (busybox-static, docker import) and a shell loop"
step "build image + run container" 'set -e
  docker rm -f armhf-loop >/dev/null 2>&1 || true
  rm -rf /tmp/rootfs && mkdir -p /tmp/rootfs/bin /tmp/rootfs/data /tmp/rootfs/tmp
  cp /bin/busybox /tmp/rootfs/bin/busybox
  for a in sh sleep cat echo date wc ls head tail tr grep; do ln -s busybox /tmp/rootfs/bin/$a; done
  tar -C /tmp/rootfs -c . | docker import - ferry-armhf-loop:1 >/dev/null
  docker run -d --name armhf-loop ferry-armhf-loop:1 /bin/sh -c \
    "echo written-before-checkpoint > /data/marker; i=0; while true; do i=\$((i+1)); echo \$i >> /data/log; sleep 1; done" >/dev/null
  for i in $(seq 60); do
    n=$(docker exec armhf-loop sh -c "wc -l < /data/log" 2>/dev/null || echo 0)
    [ "$n" -ge 3 ] && break; sleep 1
  done
  docker exec armhf-loop sh -c "cat /data/marker; echo lines \$(wc -l < /data/log)"'
echo "$out" | indent
if [ $rc = 0 ] && echo "$out" | grep -q written-before-checkpoint; then
  pass "container armhf-loop runs and writes /data/marker and /data/log"
else
  fail "the loop container did not start (exit $rc)"; exit 1
fi

say "ferry checkpoint armhf-loop (criu mode): must fail clearly, leave the app running"
step "ferry checkpoint (criu mode, must fail)" 'ferry checkpoint armhf-loop -o /root/criu.ferry'
echo "$out" | indent
echo "      exit $rc"
if [ $rc != 0 ] && echo "$out" | grep -qi criu; then
  pass "criu-mode checkpoint fails (exit $rc) naming criu"
else
  fail "criu-mode checkpoint: expected a non-zero exit naming criu, got exit $rc"
fi
step "state after the criu-mode failure" 'docker inspect -f "{{.State.Status}}" armhf-loop; ls -l /root/criu.ferry 2>&1 || true'
echo "$out" | indent
if echo "$out" | head -1 | grep -qx running; then
  pass "armhf-loop still running after the failed criu checkpoint"
else
  fail "armhf-loop is not running after the failed criu checkpoint ($(echo "$out" | head -1))"
  g 'docker start armhf-loop >/dev/null' || true
fi
if echo "$out" | grep -q 'No such file'; then pass "no payload left behind by the failed checkpoint"; else fail "a payload file was left behind: $(echo "$out" | tail -1)"; fi

say "ferry checkpoint armhf-loop --mode commit"
g 'sleep 2; docker exec armhf-loop sh -c "wc -l < /data/log" > /root/lines-before'
step "ferry checkpoint --mode commit" 'ferry checkpoint armhf-loop --mode commit -o /root/c.ferry'
echo "$out" | indent
echo "      exit $rc"
if [ $rc = 0 ] && g 'test -s /root/c.ferry'; then
  pass "commit-mode checkpoint (exit 0): $(g 'ls -l /root/c.ferry' | awk '{print $5}') bytes"
else
  fail "commit-mode checkpoint exit $rc"
fi
lines_before="$(g 'cat /root/lines-before')"

say "remove the container and every image, then ferry restore"
step "docker rm + rmi" 'docker rm -f armhf-loop >/dev/null; docker images -q | sort -u | xargs -r docker rmi -f >/dev/null; echo "containers: $(docker ps -aq | wc -l), images: $(docker images -q | wc -l)"'
echo "$out" | indent
step "ferry restore" 'ferry restore /root/c.ferry'
echo "$out" | indent
echo "      exit $rc"
[ $rc = 0 ] && pass "ferry restore (exit 0)" || fail "ferry restore exit $rc"
# in_c CMD: CMD in the restored container, its output or "?" if it fails.
in_c() { g "docker exec armhf-loop sh -c '$1'" 2>/dev/null || echo "?"; }
t0=$SECONDS
sleep 3
state="$(g 'docker inspect -f "{{.State.Status}} {{.Config.Image}}" armhf-loop' 2>&1 || true)"
marker="$(in_c 'cat /data/marker')"
lines1="$(in_c 'wc -l < /data/log')"
sleep 4
lines2="$(in_c 'wc -l < /data/log')"
head3="$(in_c 'head -3 /data/log | tr "\n" " "')"
tail3="$(in_c 'tail -3 /data/log | tr "\n" " "')"
ones="$(in_c 'grep -c "^1\$" /data/log')"
timing "restored container checks" "$((SECONDS - t0)) s"
printf '      | %s\n' "state: $state" "marker: $marker" "log lines: $lines1, 4 s later $lines2" \
  "log head: $head3" "log tail: $tail3" "lines that read 1: $ones"
if [ "${state%% *}" = running ]; then pass "restored armhf-loop runs (image ${state#* })"; else fail "restored armhf-loop is not running: $state"; fi
if [ "$marker" = written-before-checkpoint ]; then pass "/data/marker written before the checkpoint is there"; else fail "/data/marker missing or wrong: $marker"; fi
if [ "$lines1" -ge "$lines_before" ] 2>/dev/null; then
  pass "/data/log kept its $lines_before lines from before the checkpoint ($lines1 now)"
else
  fail "/data/log has $lines1 lines, fewer than the $lines_before before the checkpoint"
fi
if [ "$lines2" -gt "$lines1" ] 2>/dev/null && [ "$ones" = 2 ]; then
  pass "the loop writes again after the restore ($lines1 -> $lines2 lines) and started over at 1: commit mode carries files, not the process"
else
  fail "the restored loop does not write, or did not start over ($lines1 -> $lines2 lines, $ones lines read 1)"
fi

say "ferry restore of a damaged payload (must be refused)"
step "ferry restore (truncated payload)" 'head -c $(( $(stat -c %s /root/c.ferry) / 2 )) /root/c.ferry > /root/bad.ferry; ferry restore /root/bad.ferry --name armhf-bad'
echo "$out" | indent
echo "      exit $rc"
if [ $rc = 6 ] && ! g 'docker inspect armhf-bad >/dev/null 2>&1'; then
  pass "truncated payload refused (exit 6), no container created"
else
  fail "truncated payload: expected exit 6 and no container, got exit $rc"
fi
step "ferry restore (name taken)" 'ferry restore /root/c.ferry'
echo "$out" | indent
echo "      exit $rc"
if [ $rc != 0 ] && g 'test "$(docker inspect -f {{.State.Status}} armhf-loop)" = running'; then
  pass "restore onto a taken name fails (exit $rc), the running container untouched"
else
  fail "restore onto a taken name: exit $rc, or the running container was disturbed"
fi

# --- summary -------------------------------------------------------------------------
say "timings (qemu TCG emulation, not a board's)"
timing "total" "$((SECONDS - t_start)) s"
printf '  %s\n' "${timings[@]}"
if [ ${#failures[@]} -eq 0 ]; then
  printf '\nPASS  armhf: ferry commit mode works on an armhf guest (criu mode fails clearly, as it must)\n'
else
  printf '\nFAIL  armhf: %d check(s) failed:\n' "${#failures[@]}"
  printf '  - %s\n' "${failures[@]}"
  exit 1
fi
