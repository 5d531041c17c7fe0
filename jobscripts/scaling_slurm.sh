#!/bin/bash
# Scaling study on a Slurm cluster: one allocation of N nodes runs the same training on 1, 2, 4, ... N
# nodes (srun -N k), then writes the report (scaling.md, scaling.csv, PNG plots) into
#   runs/scaling-<job id>/
#   sbatch jobscripts/scaling_slurm.sh
#   sbatch --export=ALL,SYSTEM=perlmutter,MODE=strong,BATCH=4096 jobscripts/scaling_slurm.sh
# Edit below: account, partition (or -C gpu -q regular on Perlmutter), nodes, GPUs per node, time.
# Frontier (SYSTEM=frontier): -p batch, --ntasks-per-node=8 and no --gpus-per-node (8 GCDs per node, whole
# nodes), and --network=disable_rdzv_get; the sweep then uses 8 ranks per node.
#SBATCH -A YOUR_ACCOUNT
#SBATCH -p YOUR_PARTITION
#SBATCH -N 8
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH -t 01:00:00
#SBATCH -J hpc_mnist_scaling
#SBATCH -o hpc_mnist_scaling-%j.out
trap '' USR1 USR2   # at once: a short job's time-limit warning can come before job_begin below
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
source launch/jobs.sh && job_begin slurm   # signals handled from here on (launch/jobs.sh)

SYSTEM=${SYSTEM:-slurm}                   # perlmutter, frontier or slurm (generic): see launch/
CONFIG=${CONFIG:-configs/cnn.yaml}
OVERRIDES=${OVERRIDES:-}
MODE=${MODE:-weak}                        # weak: BATCH per rank; strong: BATCH global
BATCH=${BATCH:-128}
EPOCHS=${EPOCHS:-2}
REPEATS=${REPEATS:-1}
PREDICT=${PREDICT:-1}                     # 1: then time the all-reduce on the largest point's nodes; the report
                                          # puts the scaling model's prediction and its error beside each point
case "$SYSTEM" in                         # ranks per node: one per GPU (GCD on Frontier)
    frontier) RANKS_PER_NODE=${RANKS_PER_NODE:-8} ;;
    perlmutter) RANKS_PER_NODE=${RANKS_PER_NODE:-4} ;;
    *) RANKS_PER_NODE=${RANKS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-1}} ;;
esac
PYTHON=${PYTHON:-python}
SWEEP_DIR=${SWEEP_DIR:-runs/scaling-$SLURM_JOB_ID}   # one folder per job: points, logs, report

# shellcheck source=/dev/null
source "launch/$SYSTEM.sh"
if [ "$SYSTEM" = frontier ]; then srun --ntasks-per-node=1 mkdir -p "$MIOPEN_USER_DB_PATH"; fi  # node-local

allocated=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
if [ -z "${NODES:-}" ]; then              # powers of two up to the allocation, and the allocation itself
    NODES=1
    for ((n = 2; n < allocated; n *= 2)); do NODES="$NODES,$n"; done
    [ "$allocated" -gt 1 ] && NODES="$NODES,$allocated"
fi

predict=(); [ "$PREDICT" = 1 ] && predict=(--predict)
# shellcheck disable=SC2086  # OVERRIDES is a list of words on purpose
job_run "$PYTHON" -m hpc_mnist.scaling run --system "$SYSTEM" --nodes "$NODES" --ppn "$RANKS_PER_NODE" --mode "$MODE" \
    --batch "$BATCH" --epochs "$EPOCHS" --repeats "$REPEATS" --sweep-dir "$SWEEP_DIR" "${predict[@]}" \
    -- --config "$CONFIG" $OVERRIDES
