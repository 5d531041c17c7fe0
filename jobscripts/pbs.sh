#!/bin/bash -l
# hpc_mnist on a generic PBS cluster (PBS Pro, OpenPBS): one rank per GPU on every node, through mpiexec.
#   qsub jobscripts/pbs.sh
#   qsub -v CONFIG=configs/mlp.yaml,OVERRIDES="train.epochs=10",RANKS_PER_NODE=4 jobscripts/pbs.sh
# Edit below: project, queue, nodes (select=N, with your site's ncpus/ngpus if it asks for them), walltime;
# load your PyTorch and MPI (and mpi4py) in launch/pbs.sh, which also says how the MPI flavour is handled.
# RANKS_PER_NODE: one per GPU (default 1). Output: runs/<job id>/ and the job log.
#
# PBS sends SIGTERM at the walltime, and no earlier warning: the trainer reads the job's start time and
# walltime from qstat and stops with a checkpoint a minute before the end; this script then submits the job
# that continues the run (same script, variables, resources and run directory; it starts after this one has
# ended; MAX_RESUBMITS=10 bounds the chain). A qdel stops the ranks with a checkpoint and ends the chain:
# resubmit with RUN_NAME=<run> to resume. Not `qsig -s USR1`: PBS's login shell above this script dies of it
# and PBS kills the job at once, with no stop checkpoint (the last epoch's stays).
#PBS -A YOUR_PROJECT
#PBS -q YOUR_QUEUE
#PBS -l select=2
#PBS -l place=scatter
#PBS -l walltime=00:30:00
#PBS -j oe
#PBS -N hpc_mnist
trap '' USR1 USR2   # at once: a short job's time-limit warning can come before job_begin below
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
source launch/jobs.sh && job_begin pbs   # signals handled from here on (launch/jobs.sh)

CONFIG=${CONFIG:-configs/cnn.yaml}        # the run's YAML
OVERRIDES=${OVERRIDES:-}                  # extra section.key=value words
RANKS_PER_NODE=${RANKS_PER_NODE:-1}       # one per GPU
PYTHON=${PYTHON:-python}
RUN_NAME=${RUN_NAME:-}                    # run directory name (default: the job id; continuations keep it)
MAX_RESUBMITS=${MAX_RESUBMITS:-10}        # jobs that may continue a run stopped for the walltime

# Your modules and environment: edit launch/pbs.sh, not this file.
source launch/pbs.sh

# Pre-flight check (python -m hpc_mnist.doctor) through the same launch; DOCTOR=0 skips it.
preflight "$PYTHON" -m hpc_mnist.launch --system pbs --ppn "$RANKS_PER_NODE" -- "$PYTHON" -m hpc_mnist.doctor \
    || exit $?

# shellcheck disable=SC2086  # OVERRIDES is a list of words on purpose
job_launch "$PYTHON" -m hpc_mnist.launch --system pbs --ppn "$RANKS_PER_NODE" -- \
    "$PYTHON" -m hpc_mnist.train --config "$CONFIG" ${RUN_NAME:+log.name=$RUN_NAME} $OVERRIDES
