#!/usr/bin/env bash
# Model-checks the shm rings and their sleep protocol with loom (shm/src/ring/model.rs):
# a separate build with `--cfg loom` in its own target directory, so normal builds and
# their caches are untouched. Extra arguments go to the test binary, e.g. a test name.
# LOOM_MAX_PREEMPTIONS raises the preemption bound (default 3, see the module).
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="--cfg loom ${RUSTFLAGS:-}"
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-$PWD/target/loom}"
exec "${CARGO:-cargo}" test -p ringcast-shm --lib --release -- ring::model "$@"
