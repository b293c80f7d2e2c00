#!/bin/bash
# Interleaved rounds of measure.sh: each round runs every spec once, in order, so that the machine's load
# (shared: other work comes and goes) falls on all of them alike; one JSON line per run appended to OUT.
#
#   benchmarks/floor/rounds.sh N OUT 'LABEL|ENV=VALUE ...|TARGET' ...
#
# e.g. rounds.sh 6 many.jsonl 'floor||floor' 'uvloop-protocol||uvloop-protocol' 'select||select'
HERE=$(dirname "$0")
N=$1; OUT=$2; shift 2
for r in $(seq $N); do for spec in "$@"; do
  IFS='|' read -r label envs target <<< "$spec"
  env $envs "$HERE/measure.sh" "$target" "$label" |
    python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['round']=$r; print(json.dumps(d))" >> "$OUT"
done; done
