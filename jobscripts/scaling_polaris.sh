#!/bin/bash -l
# Scaling study on ALCF Polaris (PBS Pro): one allocation of N nodes runs the same training on 1, 2, 4,
# ... N nodes (4 ranks per node), then writes the report (scaling.md, scaling.csv, PNG plots) into
#   runs/scaling-<job id>/
#   qsub jobscripts/scaling_polaris.sh
#   qsub -v MODE=strong,BATCH=4096,NODES=1,2,4 jobscripts/scaling_polaris.sh
# Edit below: -A (your project), -q (debug-scaling: up to 10 nodes), select=N, walltime.
#PBS -A YOUR_PROJECT
#PBS -q debug-scaling
#PBS -l select=8:system=polaris
#PBS -l place=scatter
#PBS -l walltime=01:00:00
#PBS -l filesystems=home:eagle
#PBS -k doe
#PBS -j oe
#PBS -N hpc_mnist_scaling
trap '' USR1 USR2   # at once: a short job's time-limit warning can come before job_begin below
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
source launch/jobs.sh && job_begin pbs   # signals handled from here on (launch/jobs.sh)

CONFIG=${CONFIG:-configs/cnn.yaml}        # the training every point runs
OVERRIDES=${OVERRIDES:-}                  # extra section.key=value words for every point
MODE=${MODE:-weak}                        # weak: BATCH per rank; strong: BATCH global
BATCH=${BATCH:-128}
EPOCHS=${EPOCHS:-2}
REPEATS=${REPEATS:-1}
PREDICT=${PREDICT:-1}                     # 1: then time the all-reduce on the largest point's nodes; the report
                                          # puts the scaling model's prediction and its error beside each point
RANKS_PER_NODE=${RANKS_PER_NODE:-4}
PYTHON=${PYTHON:-python}
SWEEP_DIR=${SWEEP_DIR:-runs/scaling-${PBS_JOBID%%.*}}   # one folder per job: points, logs, report

source launch/polaris.sh

allocated=$(sort -u "$PBS_NODEFILE" | wc -l)
if [ -z "${NODES:-}" ]; then              # powers of two up to the allocation, and the allocation itself
    NODES=1
    for ((n = 2; n < allocated; n *= 2)); do NODES="$NODES,$n"; done
    [ "$allocated" -gt 1 ] && NODES="$NODES,$allocated"
fi

predict=(); [ "$PREDICT" = 1 ] && predict=(--predict)
# shellcheck disable=SC2086  # OVERRIDES is a list of words on purpose
job_run "$PYTHON" -m hpc_mnist.scaling run --system polaris --nodes "$NODES" --ppn "$RANKS_PER_NODE" --mode "$MODE" \
    --batch "$BATCH" --epochs "$EPOCHS" --repeats "$REPEATS" --sweep-dir "$SWEEP_DIR" "${predict[@]}" \
    -- --config "$CONFIG" $OVERRIDES
