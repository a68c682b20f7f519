#!/usr/bin/env bash
# Builds the Debian bookworm arm64 guest disk the field test boots, cached by a
# content hash of this script (which holds the package list):
#   $FIELD_CACHE/<hash>/base.img   ext4 root filesystem (raw), the guests boot
#                                  copy-on-write overlays of it
#   $FIELD_CACHE/<hash>/vmlinuz, initrd.img   for qemu -kernel/-initrd
#   $FIELD_CACHE/id_ed25519        root's ssh key in every guest
#   $FIELD_CACHE/current           -> <hash>
# Installs on the host what it needs (qemu-system-arm, qemu-user-static,
# mmdebstrap, arch-test, binfmt-support). The guest packages come from the
# Debian mirror this host's apt sources name. Idempotent: a second run with the
# same script only checks. Prints the image directory on stdout.
set -euo pipefail
log() { printf 'field/image: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
export DEBIAN_FRONTEND=noninteractive

FIELD_CACHE="${FIELD_CACHE:-/var/cache/ferry-field}"
DISK_SIZE=4G
GUEST_PACKAGES=(systemd-sysv udev dbus kmod linux-image-arm64 initramfs-tools
  docker.io apparmor iproute2 ca-certificates openssh-server criu procps
  iptables ifupdown isc-dhcp-client netbase redis-server redis-tools curl
  python3-protobuf)
# Modules the initramfs needs to mount a virtio root; MODULES=most takes ~25 min
# under qemu-user, this list a few seconds.
INITRD_MODULES=(virtio_pci virtio_mmio virtio_blk virtio_net ext4)

# --- host tools -------------------------------------------------------------
host_packages=(qemu-system-arm qemu-user-static qemu-utils mmdebstrap arch-test binfmt-support e2fsprogs openssh-client)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || update-binfmts --enable
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { log "binfmt for qemu-aarch64 is not registered"; exit 1; }

# --- the mirror this host's apt uses ----------------------------------------
# First URI of a Debian archive serving bookworm (deb822 .sources or one-line
# .list), and the one serving bookworm-security if any.
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

# --- cache key ----------------------------------------------------------------
mkdir -p "$FIELD_CACHE"
hash="$(sha256sum "$0" | cut -c1-16)"
dir="$FIELD_CACHE/$hash"
if [ ! -f "$FIELD_CACHE/id_ed25519" ]; then
  ssh-keygen -q -t ed25519 -N '' -C ferry-field -f "$FIELD_CACHE/id_ed25519"
fi
if [ -f "$dir/done" ]; then
  log "cached guest image $dir"
  ln -sfn "$hash" "$FIELD_CACHE/current"
  echo "$dir"
  exit 0
fi

start=$(date +%s)
log "building the arm64 guest image from $MIRROR (cache $dir)"
rm -rf "$dir"
mkdir -p "$dir"
root="$dir/rootfs"
sources=("deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main")
[ -n "$SECURITY" ] && sources+=("deb $SECURITY bookworm-security main")
pubkey="$(cat "$FIELD_CACHE/id_ed25519.pub")"
modules="${INITRD_MODULES[*]}"

mmdebstrap --arch=arm64 --variant=minbase --format=directory \
  --include="$(IFS=,; echo "${GUEST_PACKAGES[*]}")" \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
  --essential-hook='echo MODULES=list > "$1/etc/initramfs-tools/conf.d/ferry-field"' \
  --essential-hook="printf '%s\n' $modules > \"\$1/usr/share/initramfs-tools/modules.d/ferry-field\"" \
  --customize-hook='echo ferry-field > "$1/etc/hostname"' \
  --customize-hook='echo "/dev/vda / ext4 defaults,noatime 0 1" > "$1/etc/fstab"' \
  --customize-hook='printf "auto lo\niface lo inet loopback\nauto eth0\niface eth0 inet dhcp\n" > "$1/etc/network/interfaces"' \
  --customize-hook='mkdir -p "$1/etc/docker" && echo "{\"experimental\": true}" > "$1/etc/docker/daemon.json"' \
  --customize-hook="mkdir -p -m 700 \"\$1/root/.ssh\" && echo '$pubkey' > \"\$1/root/.ssh/authorized_keys\" && chmod 600 \"\$1/root/.ssh/authorized_keys\"" \
  --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer redis-server.service >/dev/null 2>&1 || true' \
  --customize-hook=': > "$1/etc/machine-id"; rm -f "$1/var/lib/dbus/machine-id"' \
  bookworm "$root" "${sources[@]}" >&2

kver="$(ls "$root/lib/modules" | sort -V | tail -1)"
cp "$root/boot/vmlinuz-$kver" "$dir/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$dir/initrd.img"
log "making the ext4 disk ($DISK_SIZE)"
mke2fs -q -t ext4 -L ferry-root -d "$root" "$dir/base.img" "$DISK_SIZE"
rm -rf "$root"
echo "$kver" >"$dir/kernel-version"
touch "$dir/done"
ln -sfn "$hash" "$FIELD_CACHE/current"
log "guest image ready in $(( $(date +%s) - start )) s: $dir (kernel $kver)"
echo "$dir"
