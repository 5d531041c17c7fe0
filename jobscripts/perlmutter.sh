#!/bin/bash
# hpc_mnist on NERSC Perlmutter (Slurm): 4 A100 per node, one task per GPU, NCCL.
#   sbatch jobscripts/perlmutter.sh
#   sbatch --export=ALL,CONFIG=configs/mlp.yaml,OVERRIDES="train.epochs=10" jobscripts/perlmutter.sh
# Edit below: -A (your account), -q, -N (nodes), -t (time limit). QOS (NERSC): debug for first, short jobs
# (30 min; no automatic requeue there: MAX_REQUEUES defaults to 0 in debug); regular for real runs, which may
# stop with a checkpoint and requeue themselves; preempt for cheap, checkpointed runs. Submit from $PSCRATCH
# (a clone there: runs/ and data/ are written next to the scripts), not from $HOME or CFS.
# Ranks per node other than 4 (RANKS_PER_NODE): set --ntasks-per-node to it and --cpus-per-task to
# 2 x floor(64 / ranks); hpc_mnist/runtime/systems.py derives the srun line the same way.
#SBATCH -A YOUR_ACCOUNT
#SBATCH -C gpu
#SBATCH -q debug
#SBATCH -N 2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH -t 00:30:00
#SBATCH -J hpc_mnist
#SBATCH -o hpc_mnist-%j.out
#SBATCH --signal=B:USR1@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --no-kill
# The trainer reads the job's end time when it starts and stops with a checkpoint a minute before it;
# this script then requeues the job (same job id, so the same run directory, and with --open-mode=append
# the same log) and the next start resumes. --signal is only a fallback for where the ranks cannot ask
# squeue. A scancel stops the ranks with a checkpoint and ends the job: resubmit with RUN_NAME to resume.
# A rank or node that fails (lost, quiet) after progress: the script relaunches inside the job without that node
# (MAX_RESTARTS=3), on a spare when SPARE_NODES=K of the -N nodes are held as spares (-N 3 with SPARE_NODES=1
# trains on 2); --no-kill keeps the job when a node fails so that it can. Else it requeues away from the node.
trap '' USR1 USR2   # at once: a short job's time-limit warning can come before job_begin below
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
source launch/jobs.sh && job_begin slurm   # signals handled from here on; OVERRIDES, PYTHON, RUN_NAME, ...: there

CONFIG=${CONFIG:-configs/cnn.yaml}        # the run's YAML
RANKS_PER_NODE=${RANKS_PER_NODE:-4}
MAX_REQUEUES=${MAX_REQUEUES:-$([ "${SLURM_JOB_QOS:-}" = debug ] && echo 0 || echo 10)}   # none in debug

# Modules and network settings: edit launch/perlmutter.sh, not this file. It loads the modules with nounset
# off (the pytorch module activates a conda environment) and stops with one line if a load fails.
source launch/perlmutter.sh

# The pre-flight check (python -m hpc_mnist.doctor; DOCTOR=0 skips it), then the training, through the same
# launch; a time-limit stop requeues the job, and the job's exit status is the launch's: train_job in
# launch/jobs.sh.
train_job perlmutter
