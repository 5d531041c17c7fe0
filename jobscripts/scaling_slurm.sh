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
source launch/jobs.sh && job_begin slurm   # signals handled from here on; OVERRIDES, PYTHON, ...: there

SYSTEM=${SYSTEM:-slurm}                   # perlmutter, frontier or slurm (generic): see launch/
CONFIG=${CONFIG:-configs/cnn.yaml}        # the training every point runs (OVERRIDES: words for every point)
case "$SYSTEM" in                         # ranks per node: one per GPU (GCD on Frontier)
    frontier) RANKS_PER_NODE=${RANKS_PER_NODE:-8} ;;
    perlmutter) RANKS_PER_NODE=${RANKS_PER_NODE:-4} ;;
    *) RANKS_PER_NODE=${RANKS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-1}} ;;
esac
SWEEP_DIR=${SWEEP_DIR:-runs/scaling-$SLURM_JOB_ID}   # one folder per job: points, logs, report

# shellcheck source=/dev/null
source "launch/$SYSTEM.sh"
if [ "$SYSTEM" = frontier ]; then srun --ntasks-per-node=1 mkdir -p "$MIOPEN_USER_DB_PATH"; fi  # node-local

# The sweep's settings, from the submission or set here (scaling_job in launch/jobs.sh): NODES (default 1, 2, 4,
# ... and the allocation), MODE (weak: BATCH per rank; strong: BATCH global; default weak), BATCH (128), EPOCHS
# (2), REPEATS (1), PREDICT (1: then time the all-reduce at the two smallest points of more than one rank, fit the model
# there and put its prediction and error beside each point).
scaling_job "$SYSTEM" "${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
