#!/bin/bash -l
# hpc_mnist on ALCF Aurora (PBS Pro): 6 GPUs = 12 xpu tiles per node, one rank per tile, xccl.
#   qsub jobscripts/aurora.sh
#   qsub -v CONFIG=configs/mlp.yaml,OVERRIDES="train.epochs=10" jobscripts/aurora.sh
# Edit below: -A (your project, required), -q (debug: 1-2 nodes, 1 h, for first jobs; debug-scaling: 2-256,
# 1 h; prod: >= 256; capacity: 1-16, up to 168 h), select=N (nodes), walltime. Output: runs/<job id>/ and the
# job log. ALCF: submit from your project directory (/lus/flare/projects/<project>/...), not from $HOME.
# Needs the frameworks module 2025.2 or later (backend xccl): launch/aurora.sh stops with one line otherwise.
#
# PBS sends SIGTERM at the walltime, and no earlier warning: the trainer reads the job's start time and
# walltime from qstat and stops with a checkpoint a minute before the end; this script then submits the job
# that continues the run (same script, variables, resources and run directory; it starts after this one has
# ended; MAX_RESUBMITS=10 bounds the chain). A qdel stops the ranks with a checkpoint and ends the chain:
# resubmit with RUN_NAME=<run> to resume. Not `qsig -s USR1`: PBS's login shell above this script dies of it
# and PBS kills the job at once, with no stop checkpoint (the last epoch's stays).
# A rank or node that fails (lost, quiet) after progress: the script relaunches inside the job without that node
# (MAX_RESTARTS=3), on a spare when SPARE_NODES=K of the select=N nodes are held as spares (select=3 with
# SPARE_NODES=1 trains on 2). Else the successor is placed away from the node.
#PBS -A YOUR_PROJECT
#PBS -q debug
#PBS -l select=2
#PBS -l place=scatter
#PBS -l walltime=00:30:00
#PBS -l filesystems=home:flare
#PBS -k doe
#PBS -j oe
#PBS -N hpc_mnist
trap '' USR1 USR2   # at once: a short job's time-limit warning can come before job_begin below
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
source launch/jobs.sh && job_begin pbs   # signals handled from here on; OVERRIDES, PYTHON, RUN_NAME, ...: there

CONFIG=${CONFIG:-configs/cnn.yaml}        # the run's YAML
RANKS_PER_NODE=${RANKS_PER_NODE:-12}      # one per tile; hpc_mnist/runtime/systems.py binds CPUs for any count

case "$PWD/" in "$HOME"/*) echo "hpc_mnist: warning: submitted from $PWD; ALCF asks for jobs to be submitted" \
    "from the project directory (/lus/flare/projects/<project>/...), not from \$HOME" >&2 ;; esac

# The frameworks module and the oneCCL settings: edit launch/aurora.sh, not this file. It loads the module
# with nounset off (the module activates a conda environment) and stops with one line if the load fails.
source launch/aurora.sh

# The pre-flight check (python -m hpc_mnist.doctor; DOCTOR=0 skips it), then the training, through the same
# launch; a walltime stop submits the job that continues the run: train_job in launch/jobs.sh.
train_job aurora
