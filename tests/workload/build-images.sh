#!/usr/bin/env bash
# Builds the test images into one engine from local files only (no registry):
#   ferry-workload:latest  the static counter (tests/workload/counter.c)
#   ferry-redis:latest     Debian's redis-server with its libraries
# Usage: build-images.sh [DOCKER_SOCKET]   (default /var/run/docker.sock)
# Each image carries a label with the digest of what went into it, and is only
# rebuilt when that changes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
socket="${1:-/var/run/docker.sock}"
docker_cmd=(docker -H "unix://$socket")
cache=/var/cache/ferry-test
mkdir -p "$cache"
log() { printf 'build-images: %s\n' "$*" >&2; }

# import NAME:TAG ROOTFS_DIR CHANGES… — skips when the image's label matches.
import_rootfs() {
  local image="$1" rootfs="$2"; shift 2
  local digest
  digest="$(cd "$rootfs" && find . -type f -o -type l | sort | xargs -d '\n' sha256sum 2>/dev/null | sha256sum | cut -c1-16)"
  local have
  have="$("${docker_cmd[@]}" image inspect -f '{{index .Config.Labels "ferry.test.digest"}}' "$image" 2>/dev/null || true)"
  if [ "$have" = "$digest" ]; then
    return 0
  fi
  log "importing $image into $socket"
  tar -C "$rootfs" --numeric-owner -c . |
    "${docker_cmd[@]}" import "$@" --change "LABEL ferry.test.digest=$digest" - "$image" >/dev/null
}

# --- the counter ---
counter_root="$cache/counter-root"
if [ ! -x "$cache/counter" ] || [ "$here/counter.c" -nt "$cache/counter" ]; then
  log "compiling the counter workload"
  gcc -static -O2 -Wall -o "$cache/counter" "$here/counter.c"
fi
rm -rf "$counter_root"
mkdir -p "$counter_root/tmp"
chmod 1777 "$counter_root/tmp"
cp "$cache/counter" "$counter_root/counter"
echo "this file is deleted by the counter at start" >"$counter_root/ferry-delete-me"
import_rootfs ferry-workload:latest "$counter_root" --change 'CMD ["/counter"]'

# --- redis ---
redis_root="$cache/redis-root"
rm -rf "$redis_root"
mkdir -p "$redis_root/tmp" "$redis_root/etc" "$redis_root/data" "$redis_root/usr/bin"
chmod 1777 "$redis_root/tmp"
cp /usr/bin/redis-server "$redis_root/usr/bin/"
for lib in $(ldd /usr/bin/redis-server | grep -o '/[^ ]*'); do
  mkdir -p "$redis_root$(dirname "$lib")"
  cp -L "$lib" "$redis_root$lib"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$redis_root/etc/passwd"
echo 'root:x:0:' >"$redis_root/etc/group"
import_rootfs ferry-redis:latest "$redis_root" \
  --change 'WORKDIR /data' \
  --change 'EXPOSE 6379' \
  --change 'CMD ["/usr/bin/redis-server","--protected-mode","no","--save","","--appendonly","no","--bind","0.0.0.0"]'
