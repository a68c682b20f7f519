# ferry — see README.md. Every target that needs Docker sets the host up first
# (tests/scripts/setup-host.sh is idempotent: a second run only checks).

CARGO    ?= cargo
FERRY    := target/release/ferry
SHELL    := /bin/bash

.PHONY: all build setup test unit fuzz fuzz-short demo bench bench-core bench-migrate bench-precopy soak fleet-soak aarch64 armv7 arm arm-test field-test clean stop-engines

all: build

build:
	$(CARGO) build --release --locked

setup:
	bash tests/scripts/setup-host.sh

# Unit tests (no Docker needed), the end-to-end tests against real engines,
# the ARM binaries under qemu, and a short fuzz run of the payload parsers.
test: setup build
	$(CARGO) test --release --locked
	bash tests/scripts/with-engines.sh all -- $(CARGO) test --release --locked -- --ignored --test-threads=1
	$(MAKE) arm-test
	$(MAKE) fuzz-short

unit:
	$(CARGO) test --locked

# Coverage-guided fuzzing of the payload parsers (manifest, unpack, CRIU
# images) with cargo-fuzz; fails on any crash. FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 300
fuzz:
	bash tests/scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-short:
	bash tests/scripts/fuzz.sh 10

# Sets the host up, starts a counter, checkpoints it, restores it into a new
# container and shows the counter carrying on.
demo: setup build
	bash tests/scripts/with-engines.sh a -- bash tests/scripts/demo.sh

bench-core: setup build
	bash tests/scripts/with-engines.sh a -- bash tests/scripts/bench-core.sh

# The paper's Table 1: ferry migrate A→B next to the paper's docker+tar
# method and Podman's export/import, per size (SIZES="16 64 128 256"); over a
# shaped link with LINK=RATE:DELAY (e.g. 100mbit:5ms, see tests/scripts/link.sh),
# else over loopback; WORKLOAD=redis moves Redis holding SIZE MiB of records
# (memory lz4 compresses) instead of the counter's random pages.
SIZES ?= 16 64 128 256
LINK  ?=
WORKLOAD ?=
bench-migrate: build
	bash tests/scripts/setup-host.sh --bench
	bash tests/scripts/with-engines.sh all -- python3 tests/scripts/bench-migrate.py $(SIZES) --repeat 5 $(if $(LINK),--link $(LINK)) $(if $(WORKLOAD),--workload $(WORKLOAD))

# Issue 14: plain migrate, migrate --precopy, and migrate after a replicate
# snapshot, for a counter whose memory changes at each DIRTY rate (MiB/s),
# medians of REPEAT; a markdown table, and every run in PRECOPY_JSON. Over a
# shaped link, 100mbit:5ms unless LINK says otherwise (LINK=none: loopback).
# Not part of `make test`.
PRECOPY_SIZES ?= 64 128
DIRTY         ?= 0,1,8
REPEAT        ?= 3
PRECOPY_JSON  ?= target/bench-precopy.json
bench-precopy: setup build
	bash tests/scripts/with-engines.sh all -- python3 tests/scripts/bench-precopy.py $(PRECOPY_SIZES) --dirty $(DIRTY) \
	  --repeat $(REPEAT) --json $(PRECOPY_JSON) $(if $(filter none,$(LINK)),,--link $(or $(LINK),100mbit:5ms))

# The paper's study on this host: 16–512 MiB, 5 repetitions, CRIU and commit,
# with the paper's own scripts as baseline; tables and SVG figures in OUT.
OUT ?= target/ferry-bench
bench: setup build
	bash tests/scripts/with-engines.sh a -- $(FERRY) bench --sizes 16,32,64,128,256,512 --repeat 5 --mode criu,commit --baseline --out $(OUT)

# Migrates a counter back and forth HOPS times (default 200); fails on any
# failed hop, a lost checksum or a leftover. Not part of `make test`.
HOPS ?= 200
soak: setup build
	bash tests/scripts/with-engines.sh all -- python3 tests/scripts/bench-migrate.py --soak $(HOPS)

# The paper's experiment on a fleet: engines A, B and C with an agent each in
# one etcd, SOAK_COUNTERS counters of 16 MiB handed to the fleet, and `ferry
# balance --policy rotate` moving them every SOAK_EVERY for SOAK_MINUTES, while
# a liveness service watches the engines (never two copies, never none for
# over 10 s, counts only going up, memory intact). Prints the moves, the
# paper's Table 1 and the longest gap in progress; fails on any failure.
# Not part of `make test`.
SOAK_MINUTES  ?= 180
SOAK_EVERY    ?= 10s
SOAK_COUNTERS ?= 3
fleet-soak: setup build
	bash tests/scripts/with-engines.sh all -- python3 tests/scripts/fleet-soak.py --minutes $(SOAK_MINUTES) \
	  --every $(SOAK_EVERY) --counters $(SOAK_COUNTERS)

# Static musl binaries for the boards (see cross/setup.sh for why this
# toolchain): target/<triple>/release/ferry.
AARCH64 := aarch64-unknown-linux-musl
ARMV7   := armv7-unknown-linux-musleabihf

aarch64:
	bash cross/setup.sh
	bash cross/build.sh $(AARCH64)

armv7:
	bash cross/setup.sh
	bash cross/build.sh $(ARMV7)

arm: aarch64 armv7

# Both ARM binaries: static, within 3.0 MiB, run under qemu, unit tests pass there
# (among them a mutual TLS handshake and an 8 MiB transfer through the agent).
arm-test: arm
	bash cross/check-static.sh $(AARCH64) $(ARMV7)
	bash cross/build.sh $(AARCH64) test
	bash cross/build.sh $(ARMV7) test

# Field test (issue 10): two emulated arm64 boards (qemu-system-aarch64, TCG,
# 1 GiB each) booted at once from a cached Debian bookworm image; ferry copied
# in as one file, its agent run by boards/ferry-serve.service; doctor, a counter
# migrated A→B→A→B, Redis with data, replicate then failover after guest A's
# qemu is killed. Times printed are emulation times. Not part of `make test`:
# CI runs it right after (≈ 15 min, + ≈ 9 min for the guest image on a fresh host).
field-test:
	bash tests/scripts/field/run.sh

stop-engines:
	bash tests/scripts/engines.sh stop all

clean:
	$(CARGO) clean
