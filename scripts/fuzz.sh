#!/usr/bin/env bash
# Coverage-guided fuzzing with cargo-fuzz (libFuzzer) of everything ringcast reads from
# outside (fuzz/fuzz_targets/*.rs). The stable toolchain runs cargo-fuzz's nightly flags
# under RUSTC_BOOTSTRAP=1; cargo-fuzz is installed on first use.
#
#   scripts/fuzz.sh smoke [SECONDS]        every target SECONDS (default 5) from its corpus
#   scripts/fuzz.sh run TARGET [ARGS...]   one target until stopped; ARGS go to libFuzzer,
#                                          e.g. -max_total_time=600 -runs=10000000
#
# The corpus in fuzz/corpus/TARGET is read, never written: new inputs go to
# fuzz/target/corpus/TARGET. A crash leaves its input in fuzz/target/artifacts/TARGET and
# fails the run; reproduce it with `scripts/fuzz.sh run TARGET fuzz/target/artifacts/...`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
CARGO="${CARGO:-cargo}"
TARGETS=(datagram seal reassembly request ring config)

if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    "$CARGO" install --locked cargo-fuzz
fi

# One build for every target (release, debug assertions on, AddressSanitizer).
"$CARGO" fuzz build -O

run() {
    local target=$1
    shift
    mkdir -p "target/corpus/$target" "target/artifacts/$target" "corpus/$target"
    "$CARGO" fuzz run -O "$target" "target/corpus/$target" "corpus/$target" -- \
        -artifact_prefix="target/artifacts/$target/" -print_final_stats=1 "$@"
}

case "${1:-smoke}" in
    smoke)
        seconds="${2:-5}"
        for target in "${TARGETS[@]}"; do
            log="target/smoke-$target.log"
            status=0
            run "$target" -max_total_time="$seconds" >"$log" 2>&1 || status=$?
            execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
            cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1)"
            echo "fuzz: $target ${seconds}s: ${execs:-0} executions, ${cov:-cov: ?}"
            if [ "$status" -ne 0 ]; then
                tail -40 "$log"
                echo "fuzz: $target FAILED (input in fuzz/target/artifacts/$target)" >&2
                exit 1
            fi
        done
        ;;
    run)
        target="${2:?usage: scripts/fuzz.sh run TARGET [libFuzzer args]}"
        shift 2
        run "$target" "$@"
        ;;
    *)
        echo "usage: scripts/fuzz.sh smoke [SECONDS] | run TARGET [ARGS...]" >&2
        exit 2
        ;;
esac
