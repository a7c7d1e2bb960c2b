#!/usr/bin/env bash
# One lane of a long simulator run: seeds START..END in chunks of CHUNK, each chunk's
# output in DIR/out_<start>.txt and a line "<start> <count> rc=<status>" in
# DIR/done.txt. A chunk without rc=0, or whose output lacks its `violations:` summary
# line, was cut short and must be run again. Run two lanes on two cores, e.g.
#   nohup nice -n 19 scripts/sim-lane.sh 0 50000 1000 &
#   nohup nice -n 19 scripts/sim-lane.sh 50000 100000 1000 &
# and total them with scripts/sim-summary.py.
set -u
start=$1 end=$2 chunk=$3
dir=${SIM_DIR:-/work/simrun2}
sim=${SIM_BIN:-$dir/ringcast-sim}
s=$start
while [ "$s" -lt "$end" ]; do
    n=$chunk
    [ $((s + n)) -gt "$end" ] && n=$((end - s))
    "$sim" --seeds "$n" --start "$s" --nodes 2-16 >"$dir/out_$s.txt" 2>&1
    echo "$s $n rc=$?" >>"$dir/done.txt"
    s=$((s + n))
done
