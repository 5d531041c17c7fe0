#!/bin/bash -l
# hpc_mnist on a generic PBS cluster (PBS Pro, OpenPBS): one rank per GPU on every node, through mpiexec.
#   qsub jobscripts/pbs.sh
#   qsub -v CONFIG=configs/mlp.yaml,OVERRIDES="train.epochs=10",RANKS_PER_NODE=4 jobscripts/pbs.sh
# Edit below: project, queue, nodes (select=N, with your site's ncpus/ngpus if it asks for them), walltime;
# load your PyTorch and MPI (and mpi4py) in launch/pbs.sh, which also says how the MPI flavour is handled.
# RANKS_PER_NODE: one per GPU (default 1). Output: runs/<job id>/ and the job log.
#
# PBS sends SIGTERM at the walltime, and no earlier warning: the trainer stops with a checkpoint before
# an epoch that would not fit (train.time_limit, from this job's walltime via qstat) or on SIGTERM.
# Long trainings: chain jobs on one run directory; each resumes from the newest checkpoint:
#   first=$(qsub -v RUN_NAME=cnn-long jobscripts/pbs.sh)
#   qsub -W depend=afterany:$first -v RUN_NAME=cnn-long jobscripts/pbs.sh
#PBS -A YOUR_PROJECT
#PBS -q YOUR_QUEUE
#PBS -l select=2
#PBS -l place=scatter
#PBS -l walltime=00:30:00
#PBS -j oe
#PBS -N hpc_mnist
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"

CONFIG=${CONFIG:-configs/cnn.yaml}        # the run's YAML
OVERRIDES=${OVERRIDES:-}                  # extra section.key=value words
RANKS_PER_NODE=${RANKS_PER_NODE:-1}       # one per GPU
PYTHON=${PYTHON:-python}
RUN_NAME=${RUN_NAME:-}                    # run directory name (default: the job id); set it to chain jobs
source launch/jobs.sh
TIME_LIMIT=${TIME_LIMIT:-$(pbs_time_limit)}  # seconds the trainer may use (default: walltime - 60 s)

# Your modules and environment: edit launch/pbs.sh, not this file.
source launch/pbs.sh

# Pre-flight check (python -m hpc_mnist.doctor) through the same launch; DOCTOR=0 skips it.
preflight "$PYTHON" -m hpc_mnist.launch --system pbs --ppn "$RANKS_PER_NODE" -- "$PYTHON" -m hpc_mnist.doctor \
    || exit $?

# shellcheck disable=SC2086  # OVERRIDES is a list of words on purpose
"$PYTHON" -m hpc_mnist.launch --system pbs --ppn "$RANKS_PER_NODE" -- \
    "$PYTHON" -m hpc_mnist.train --config "$CONFIG" ${RUN_NAME:+log.name=$RUN_NAME} \
    ${TIME_LIMIT:+train.time_limit=$TIME_LIMIT} $OVERRIDES
