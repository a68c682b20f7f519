#!/usr/bin/env bash
# Builds the test images into one engine from local files only (no registry):
#   ferry-workload:latest  the static counter (tests/scripts/workload/counter.c)
#   ferry-redis:latest     Debian's redis-server with its libraries
# Usage: build-images.sh [DOCKER_SOCKET]   (default /var/run/docker.sock)
# Each image is rebuilt only when what goes into it changes.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
socket="${1:-/var/run/docker.sock}"
docker_cmd=(docker -H "unix://$socket")
cache=/var/cache/ferry-test
mkdir -p "$cache"
log() { printf 'build-images: %s\n' "$*" >&2; }

# ensure_image NAME:TAG ROOTFS_DIR CHANGES…
# The image is imported once and kept as a `docker save` tar in the cache;
# every engine loads that same tar, so the image has the same id on all of
# them, as it would on hosts that pulled it from one registry.
ensure_image() {
  local image="$1" rootfs="$2"; shift 2
  local digest tar stamp
  digest="$(cd "$rootfs" && find . -type f -o -type l | sort | xargs -d '\n' sha256sum 2>/dev/null | sha256sum | cut -c1-16)"
  tar="$cache/${image//[:\/]/_}.tar"
  stamp="$tar.digest"
  if [ ! -s "$tar" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    log "building $image"
    tar -C "$rootfs" --numeric-owner -c . |
      "${docker_cmd[@]}" import "$@" --change "LABEL ferry.test.digest=$digest" - "$image" >/dev/null
    "${docker_cmd[@]}" save "$image" >"$tar.tmp"
    mv "$tar.tmp" "$tar"
    echo "$digest" >"$stamp"
  fi
  local want have
  want="sha256:$(tar -xOf "$tar" manifest.json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Config"].split("/")[-1].removesuffix(".json"))')"
  have="$("${docker_cmd[@]}" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
  if [ "$want" != "$have" ]; then
    log "loading $image into $socket"
    "${docker_cmd[@]}" load -q -i "$tar" >/dev/null
  fi
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
ensure_image ferry-workload:latest "$counter_root" --change 'CMD ["/counter"]'

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
ensure_image ferry-redis:latest "$redis_root" \
  --change 'WORKDIR /data' \
  --change 'EXPOSE 6379' \
  --change 'CMD ["/usr/bin/redis-server","--protected-mode","no","--save","","--appendonly","no","--bind","0.0.0.0"]'
