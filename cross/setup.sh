#!/usr/bin/env bash
# Installs, idempotently and offline-friendly (Debian and PyPI only), what the
# static ARM builds need on a Debian bookworm amd64 host:
#  - Debian bookworm-security's rustc-web, cargo-web and rust-web-src: one
#    matching compiler and std source, so -Zbuild-std can build std for musl
#    targets that rustup cannot fetch here (armv7 musl);
#  - zig (PyPI ziglang) through cargo-zigbuild as the linker: Debian ships no
#    musl startup files for rustc, and zig brings musl and an unwinder;
#  - qemu-user-static, to run the ARM binaries and their tests.
# No foreign dpkg architecture is added: bookworm's armhf security index fails
# to download and apt-get update would then fail.
set -euo pipefail
log() { printf 'cross/setup: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
export DEBIAN_FRONTEND=noninteractive

VENV=/opt/ferry-cross/venv
ZIGLANG_VERSION=0.13.0
ZIGBUILD_VERSION=0.24.1

missing=()
for p in rustc-web cargo-web rust-web-src qemu-user-static file binutils python3-venv; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! "$VENV/bin/cargo-zigbuild" --version 2>/dev/null | grep -q "$ZIGBUILD_VERSION" \
   || ! "$VENV/bin/python" -m ziglang version 2>/dev/null | grep -q "$ZIGLANG_VERSION"; then
  log "installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $ZIGBUILD_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$ZIGBUILD_VERSION"
fi
log "$(/usr/bin/rustc --version), zig $("$VENV/bin/python" -m ziglang version), $("$VENV/bin/cargo-zigbuild" --version)"
