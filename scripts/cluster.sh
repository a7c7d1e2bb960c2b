#!/usr/bin/env bash
# `make cluster`: N ringcastd engines on this host (127.0.0.1 .. 127.0.0.N, loopback),
# each with its own state directory and client socket, until Ctrl-C (then each leaves
# the ring cleanly). For trying clients against a real multi-engine ring; tests build
# their own clusters (engine/tests/common).
#
#   CLUSTER_NODES (3)  CLUSTER_PORT (5405)  CLUSTER_DIR (/tmp/ringcast-cluster)
set -euo pipefail

n=${CLUSTER_NODES:-3}
port=${CLUSTER_PORT:-5405}
dir=${CLUSTER_DIR:-/tmp/ringcast-cluster}
bin=${RINGCAST_BIN:-./target/release}

if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1 || n > 64)); then
    echo "CLUSTER_NODES must be 1..64, not '$n'" >&2
    exit 2
fi

nodes=()
for i in $(seq 1 "$n"); do
    nodes+=(--node "$i=127.0.0.$i")
done

pids=()
stop() {
    trap - INT TERM EXIT
    ((${#pids[@]})) && kill -TERM "${pids[@]}" 2>/dev/null || true
    wait || true
    echo "cluster stopped; logs in $dir/n*/log"
}
trap stop INT TERM EXIT

for i in $(seq 1 "$n"); do
    mkdir -p "$dir/n$i"
    "$bin/ringcastd" --node-id "$i" --port "$port" --cluster-name "local-$port" \
        --idle backoff --state-dir "$dir/n$i" --ipc-socket "$dir/n$i/ringcast.sock" \
        "${nodes[@]}" >"$dir/n$i/log" 2>&1 &
    pids+=($!)
done

# Wait (at most 30 s) until node 1 reports a ring of all n members.
for _ in $(seq 1 300); do
    members=$("$bin/ringcast" status --state-dir "$dir/n1" --node-id 1 2>/dev/null |
        sed -n 's/^members *//p' | head -1)
    if [[ -n $members ]] && (($(wc -w <<<"${members//,/ }") == n)); then
        break
    fi
    for pid in "${pids[@]}"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "an engine exited; see $dir/n*/log" >&2
            exit 1
        fi
    done
    sleep 0.1
done
"$bin/ringcast" status --state-dir "$dir/n1" --node-id 1 | grep -E '^(state|ring_id|members) ' 

cat <<EOT

$n engines on 127.0.0.1..$n, UDP port $port. Clients of engine i use its socket:
  RINGCAST_SOCKET=$dir/n1/ringcast.sock $bin/ringcast listen demo
  RINGCAST_SOCKET=$dir/n2/ringcast.sock $bin/ringcast send demo hello
  RINGCAST_SOCKET=$dir/n1/ringcast.sock $bin/ringcast groups
  $bin/ringcast status --state-dir $dir/n2 --node-id 2
Ctrl-C stops them.
EOT
wait
