#!/bin/bash
# hpc_mnist on a generic Slurm cluster: one task per GPU on every node.
#   sbatch jobscripts/slurm.sh
#   sbatch --export=ALL,CONFIG=configs/mlp.yaml,OVERRIDES="train.epochs=10" jobscripts/slurm.sh
# Edit below: account, partition, nodes, tasks and GPUs per node, time limit; load your PyTorch in
# launch/slurm.sh.
#SBATCH -A YOUR_ACCOUNT
#SBATCH -p YOUR_PARTITION
#SBATCH -N 2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH -t 00:30:00
#SBATCH -J hpc_mnist
#SBATCH -o hpc_mnist-%j.out
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
# The trainer reads the job's end time when it starts and stops with a checkpoint a minute before it;
# this script then requeues the job (same job id, so the same run directory, and with --open-mode=append
# the same log) and the next start resumes. --signal is only a fallback for where the ranks cannot ask
# squeue. A scancel stops the ranks with a checkpoint and ends the job: resubmit with RUN_NAME to resume.
trap '' USR1 USR2   # at once: a short job's time-limit warning can come before job_begin below
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
source launch/jobs.sh && job_begin slurm   # signals handled from here on (launch/jobs.sh)

CONFIG=${CONFIG:-configs/cnn.yaml}        # the run's YAML
OVERRIDES=${OVERRIDES:-}                  # extra section.key=value words
RUN_NAME=${RUN_NAME:-}                    # run directory name (default: the job id, kept on requeue)
MAX_REQUEUES=${MAX_REQUEUES:-10}
RANKS_PER_NODE=${RANKS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-1}}
PYTHON=${PYTHON:-python}

# Modules and network settings: edit launch/slurm.sh, not this file.
source launch/slurm.sh

# Pre-flight check (python -m hpc_mnist.doctor) through the same launch; DOCTOR=0 skips it.
preflight "$PYTHON" -m hpc_mnist.launch --system slurm --ppn "$RANKS_PER_NODE" -- "$PYTHON" -m hpc_mnist.doctor \
    || exit $?

# shellcheck disable=SC2086  # OVERRIDES is a list of words on purpose
# Requeue after a time-limit stop, and the job's exit status: see job_launch in launch/jobs.sh.
job_launch "$PYTHON" -m hpc_mnist.launch --system slurm --ppn "$RANKS_PER_NODE" -- \
    "$PYTHON" -m hpc_mnist.train --config "$CONFIG" ${RUN_NAME:+log.name=$RUN_NAME} $OVERRIDES
