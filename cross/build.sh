#!/usr/bin/env bash
# Builds ferry as a static musl binary for one ARM target, or runs the unit
# tests built for it under qemu:
#   cross/build.sh aarch64-unknown-linux-musl|armv7-unknown-linux-musleabihf [test]
# The binary lands in target/<triple>/release/ferry. Uses the toolchain that
# cross/setup.sh installs; RUSTFLAGS is never set (it would override the
# per-target flags below). The built std and zig's cache are kept between builds.
set -euo pipefail
cd "$(dirname "$0")/.."
triple="${1:?usage: cross/build.sh TRIPLE [test]}"
mode="${2:-build}"
case "$triple" in
  aarch64-unknown-linux-musl) qemu=(qemu-aarch64-static -cpu cortex-a53) ;;
  armv7-unknown-linux-musleabihf) qemu=(qemu-arm-static -cpu cortex-a7) ;;
  *) echo "cross/build.sh: unknown target '$triple'" >&2; exit 2 ;;
esac
upper="$(echo "$triple" | tr 'a-z-' 'A-Z_')"

# Debian's compiler, its std source, and cargo-zigbuild with zig as the linker.
export CARGO=/usr/bin/cargo RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
export PATH="/opt/ferry-cross/venv/bin:$PATH"
export ZIG_GLOBAL_CACHE_DIR=/var/cache/ferry-cross/zig
# zig links musl itself: rustc must not bring its own (absent) crt objects.
export "CARGO_TARGET_${upper}_RUSTFLAGS=-C link-self-contained=no"
export "CARGO_TARGET_${upper}_RUNNER=${qemu[*]}"
unset RUSTFLAGS

case "$mode" in
  build)
    # panic=abort (the release profile) needs panic_abort's std.
    cargo-zigbuild zigbuild --locked --release --target "$triple" -Zbuild-std=std,panic_abort
    ;;
  test)
    # Tests unwind: they are built in the test profile with panic_unwind's std,
    # and run under qemu through the runner above.
    cargo-zigbuild test --locked --target "$triple" -Zbuild-std=std,panic_unwind --bins
    ;;
  *) echo "cross/build.sh: unknown mode '$mode': build or test" >&2; exit 2 ;;
esac
