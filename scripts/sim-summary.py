#!/usr/bin/env python3
"""Totals of the finished chunks of scripts/sim-lane.sh runs (SIM_DIR, default
/work/simrun2): seeds, messages, configurations, faults, time, violations, and the seed
ranges covered. Only chunks with rc=0 and a `violations:` summary line count."""
import os
import re

d = os.environ.get("SIM_DIR", "/work/simrun2")
done = set()
for line in open(os.path.join(d, "done.txt")):
    p = line.split()
    if len(p) >= 3 and p[2] == "rc=0":
        done.add((int(p[0]), int(p[1])))
tot = dict(seeds=0, sub=0, conf=0, faults=0, sim=0.0, wall=0.0, viol=0, chunks=0)
spans = []
for start, n in sorted(done):
    t = open(os.path.join(d, f"out_{start}.txt")).read()
    m = re.search(r"seeds run: (\d+)", t)
    v = re.search(r"violations: (\d+) in (\d+) seeds", t)
    if not m or not v:
        continue
    tot["seeds"] += int(m.group(1))
    tot["sub"] += int(re.search(r"messages submitted: (\d+)", t).group(1))
    tot["conf"] += int(re.search(r"regular configurations installed: (\d+)", t).group(1))
    tot["faults"] += int(re.search(r"faults: (\d+)", t).group(1))
    tot["sim"] += float(re.search(r"simulated time: ([\d.]+)", t).group(1))
    tot["wall"] += float(re.search(r"wall time: ([\d.]+)", t).group(1))
    tot["viol"] += int(v.group(1))
    tot["chunks"] += 1
    if spans and spans[-1][1] == start:
        spans[-1][1] = start + n
    else:
        spans.append([start, start + n])
print(tot)
print([f"{a}-{b - 1}" for a, b in spans])
