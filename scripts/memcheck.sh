#!/usr/bin/env bash
# The unsafe code under valgrind memcheck: the tests of ringcast-shm (rings, regions,
# eventfds, pools) and of the engine library, then a real ringcastd
# (io_uring, provided-buffer rings, mmap) serving `ringcast listen` and three `ringcast
# send`, all four processes under memcheck. Any memcheck error fails the run.
#
# Two property tests that check ring and allocator logic (not memory safety) with
# thousands of cases are skipped here: under valgrind they take minutes; the garbage-
# writing property test of the ring stays. Every step has a timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
VALGRIND=(valgrind -q --error-exitcode=99 --leak-check=no --track-origins=no)

command -v valgrind >/dev/null || { echo "memcheck: valgrind is not installed" >&2; exit 1; }

# Path of the test executable cargo builds for `$@` (one test target).
test_binary() {
    "$CARGO" test -q "$@" --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1
}

run_tests() {
    local what=$1 bin=$2
    shift 2
    echo "memcheck: $what"
    timeout 300 "${VALGRIND[@]}" "$bin" -q --test-threads=2 "$@"
}

run_tests "ringcast-shm unit tests" "$(test_binary -p ringcast-shm --lib)" \
    --skip ring::tests::ring_matches_a_vecdeque_model \
    --skip pool::tests::random_alloc_free_never_overlaps_nor_leaks
run_tests "ringcast-engine unit tests" "$(test_binary -p ringcast-engine --lib)"

echo "memcheck: ringcastd, ringcast listen and send"
"$CARGO" build -q -p ringcast-engine --bin ringcastd -p ringcast-cli --bin ringcast
bin="${CARGO_TARGET_DIR:-target}/debug"
dir="$(mktemp -d /tmp/ringcast-memcheck.XXXXXX)"
engine_pid=
listen_pid=
cleanup() {
    [ -n "$listen_pid" ] && kill "$listen_pid" 2>/dev/null || true
    [ -n "$engine_pid" ] && kill "$engine_pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
# UDP ports 47990-47999 belong to this script (the Rust tests use 47100-47259); the
# first one not bound now.
port=
for candidate in $(seq 47990 47999); do
    if ! ss -Huln "sport = :$candidate" | grep -q .; then
        port=$candidate
        break
    fi
done
[ -n "$port" ] || { echo "memcheck: UDP ports 47990-47999 all busy" >&2; exit 1; }
sock="$dir/ringcast.sock"
timeout 240 "${VALGRIND[@]}" "$bin/ringcastd" --node-id 1 --node "1=127.0.0.1" --port "$port" \
    --idle backoff --ipc-socket "$sock" --state-dir "$dir/state" >"$dir/engine.log" 2>&1 &
engine_pid=$!
for _ in $(seq 600); do
    [ -S "$sock" ] && break
    sleep 0.1
done
[ -S "$sock" ] || { cat "$dir/engine.log"; echo "memcheck: engine did not start" >&2; exit 1; }
timeout 120 "${VALGRIND[@]}" "$bin/ringcast" listen --socket "$sock" memcheck >"$dir/listen.out" 2>&1 &
listen_pid=$!
for _ in $(seq 600); do
    grep -q "confchg" "$dir/listen.out" 2>/dev/null && break
    sleep 0.1
done
for i in 1 2 3; do
    timeout 60 "${VALGRIND[@]}" "$bin/ringcast" send --socket "$sock" memcheck "hello-$i" >/dev/null
done
for _ in $(seq 600); do
    [ "$(grep -c '^deliver' "$dir/listen.out" 2>/dev/null)" -ge 3 ] && break
    sleep 0.1
done
kill -INT "$listen_pid"
listen_status=0
wait "$listen_pid" || listen_status=$?
listen_pid=
kill -TERM "$engine_pid"
engine_status=0
wait "$engine_pid" || engine_status=$?
engine_pid=
delivered="$(grep -c '^deliver' "$dir/listen.out" || true)"
if [ "$engine_status" -ne 0 ] || [ "$listen_status" -eq 99 ] || [ "$delivered" -ne 3 ]; then
    cat "$dir/engine.log" "$dir/listen.out"
    echo "memcheck: FAILED (engine exit $engine_status, listen exit $listen_status, $delivered of 3 delivered)" >&2
    exit 1
fi
echo "memcheck: clean (engine exit 0, 3 of 3 delivered, no memcheck error)"
