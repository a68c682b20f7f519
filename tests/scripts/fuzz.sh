#!/usr/bin/env bash
# Coverage-guided fuzzing of the payload parsers (issue 11): the manifest,
# unpacking (lz4 + tar) and the CRIU image checks, each for SECONDS_PER_TARGET
# seconds (default 10) with libFuzzer through cargo-fuzz.
#
#   tests/scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Fails if any target crashes, panics, leaks, runs out of memory or takes more
# than 10 s on one input; libFuzzer then leaves the input in
# tests/fuzz/artifacts/<target>/ (replay it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz <target> FILE`), and
# every such input becomes a unit test next to the code it broke.
#
# cargo-fuzz needs nightly flags (-Zsanitizer=address, -Cpasses); the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1, so no second toolchain is
# installed. The seeds in tests/fuzz/corpus/ are only read: what the fuzzers
# find goes to tests/fuzz/target/corpus/, kept between runs.
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_PER_TARGET=${1:-10}
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(manifest unpack images)
export RUSTC_BOOTSTRAP=1
# The unpack target makes and removes a folder per input: in memory it runs
# about a third faster than on disk.
if [[ -d /dev/shm && -w /dev/shm ]]; then
    export TMPDIR=/dev/shm
fi

if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

cargo fuzz build --fuzz-dir tests/fuzz

failed=()
for target in "${TARGETS[@]}"; do
    scratch=tests/fuzz/target/corpus/$target
    log=tests/fuzz/target/$target.log
    mkdir -p "$scratch"
    echo "fuzz: $target for ${SECONDS_PER_TARGET}s"
    if cargo fuzz run --fuzz-dir tests/fuzz "$target" "$scratch" "tests/fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        per_second=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
        echo "fuzz: $target ok: $runs executions, $per_second/s, $coverage, corpus $(ls "$scratch" | wc -l) inputs"
    else
        tail -40 "$log"
        echo "fuzz: $target FAILED (full log: $log)"
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz: crashes in ${failed[*]}: see tests/fuzz/artifacts/" >&2
    exit 1
fi
