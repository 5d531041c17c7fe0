#!/bin/bash
# hpc_mnist on OLCF Frontier (Slurm): 8 MI250X GCDs per node, one task per GCD (each sees device 0),
# ROCm PyTorch with RCCL as the nccl backend.
#   sbatch jobscripts/frontier.sh
#   sbatch --export=ALL,CONFIG=configs/mlp.yaml,OVERRIDES="train.epochs=10" jobscripts/frontier.sh
# Edit below: -A (your project), -p batch (add -q debug for the debug QOS: first jobs, up to 2 h), -N (nodes),
# -t (time limit). Set HPC_MNIST_VENV to your ROCm PyTorch environment, and keep the rocm module in
# launch/frontier.sh matched to its wheel. Submit from a clone on Orion ($MEMBERWORK or $PROJWORK), where
# runs/ and data/ are written, not from $HOME.
#SBATCH -A YOUR_PROJECT
#SBATCH -p batch
#SBATCH -N 2
#SBATCH -t 00:30:00
#SBATCH --network=disable_rdzv_get
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
RANKS_PER_NODE=${RANKS_PER_NODE:-8}       # one per GCD

# Modules and network settings: edit launch/frontier.sh, not this file. It loads the modules with nounset off
# and stops with one line if a load fails.
source launch/frontier.sh
# --network=disable_rdzv_get (above) goes with the FI_CXI_RDZV_PROTO=alt_read that rccl-net-plugin sets (OLCF).
# MIOpen's cache folder is node-local (launch/frontier.sh): create it on every node.
srun --ntasks-per-node=1 mkdir -p "$MIOPEN_USER_DB_PATH"

# The pre-flight check (python -m hpc_mnist.doctor; DOCTOR=0 skips it), then the training, through the same
# launch; a time-limit stop requeues the job, and the job's exit status is the launch's: train_job in
# launch/jobs.sh.
train_job frontier
