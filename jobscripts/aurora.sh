#!/bin/bash -l
# hpc_mnist on ALCF Aurora (PBS Pro): 6 GPUs = 12 xpu tiles per node, one rank per tile, xccl.
#   qsub jobscripts/aurora.sh
#   qsub -v CONFIG=configs/mlp.yaml,OVERRIDES="train.epochs=10" jobscripts/aurora.sh
# Edit below: -A (your project, required), -q (debug: 1-2 nodes, 1 h, for first jobs; debug-scaling: 2-256,
# 1 h; prod: >= 256; capacity: 1-16, up to 168 h), select=N (nodes), walltime. Output: runs/<job id>/ and the
# job log. ALCF: submit from your project directory (/lus/flare/projects/<project>/...), not from $HOME.
# Needs the frameworks module 2025.2 or later (backend xccl): launch/aurora.sh stops with one line otherwise.
#
# PBS sends SIGTERM at the walltime, and no earlier warning: the trainer stops with a checkpoint before
# an epoch that would not fit (train.time_limit, from this job's walltime via qstat) or on SIGTERM.
# Long trainings: chain jobs on one run directory; each resumes from the newest checkpoint:
#   first=$(qsub -v RUN_NAME=cnn-long jobscripts/aurora.sh)
#   qsub -W depend=afterany:$first -v RUN_NAME=cnn-long jobscripts/aurora.sh
#PBS -A YOUR_PROJECT
#PBS -q debug
#PBS -l select=2
#PBS -l place=scatter
#PBS -l walltime=00:30:00
#PBS -l filesystems=home:flare
#PBS -k doe
#PBS -j oe
#PBS -N hpc_mnist
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"

CONFIG=${CONFIG:-configs/cnn.yaml}
OVERRIDES=${OVERRIDES:-}
RANKS_PER_NODE=${RANKS_PER_NODE:-12}      # one per tile; hpc_mnist/launch.py builds the CPU binding for any count
PYTHON=${PYTHON:-python}
RUN_NAME=${RUN_NAME:-}                    # run directory name (default: the job id); set it to chain jobs
source launch/jobs.sh
TIME_LIMIT=${TIME_LIMIT:-$(pbs_time_limit)}  # seconds the trainer may use (default: walltime - 60 s)

case "$PWD/" in "$HOME"/*) echo "hpc_mnist: warning: submitted from $PWD; ALCF asks for jobs to be submitted" \
    "from the project directory (/lus/flare/projects/<project>/...), not from \$HOME" >&2 ;; esac

# The frameworks module and the oneCCL settings: edit launch/aurora.sh, not this file. It loads the module
# with nounset off (the module activates a conda environment) and stops with one line if the load fails.
source launch/aurora.sh

# Pre-flight check (python -m hpc_mnist.doctor) through the same launch; DOCTOR=0 skips it.
preflight "$PYTHON" -m hpc_mnist.launch --system aurora --ppn "$RANKS_PER_NODE" -- "$PYTHON" -m hpc_mnist.doctor \
    || exit $?

# shellcheck disable=SC2086  # OVERRIDES is a list of words on purpose
"$PYTHON" -m hpc_mnist.launch --system aurora --ppn "$RANKS_PER_NODE" -- \
    "$PYTHON" -m hpc_mnist.train --config "$CONFIG" ${RUN_NAME:+log.name=$RUN_NAME} \
    ${TIME_LIMIT:+train.time_limit=$TIME_LIMIT} $OVERRIDES
