#!/usr/bin/env bash
# Samples/s of one MLP epoch (20,000 synthetic digits), idle and with two busy processes on the machine:
# the default thread choice, one thread, and a passive OpenMP wait policy (benchmarks/threads-under-load.md).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
runs=${RUNS:-/tmp/threads-under-load}

one() {  # LABEL [VAR=VALUE ...]
    local label=$1
    shift
    rm -rf "${runs:?}/$label"
    env "$@" timeout 300 python -m hpc_mnist.train --config configs/mlp.yaml data.name=synthetic \
        data.synthetic_train=20000 data.synthetic_test=1000 train.epochs=1 log.console=plain \
        log.tensorboard=false "log.dir=$runs" "log.name=$label" > /dev/null 2>&1
    python - "$runs/$label/summary.json" "$label" <<'PY' || echo "$label: failed or timed out"
import json, sys
s = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}: {s['samples_per_s']:,.0f} samples/s, {s['threads_per_rank']} thread(s)")
PY
}

one idle-default
one idle-1thread OMP_NUM_THREADS=1
yes > /dev/null & busy1=$!
yes > /dev/null & busy2=$!
sleep 2
one loaded-default
one loaded-1thread OMP_NUM_THREADS=1
one loaded-passive OMP_WAIT_POLICY=PASSIVE
kill "$busy1" "$busy2"
one idle-passive OMP_WAIT_POLICY=PASSIVE
