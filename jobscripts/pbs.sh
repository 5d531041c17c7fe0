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
# A rank or node that fails (lost, quiet) after progress: the script relaunches inside the job without that node
# (MAX_RESTARTS=3), on a spare when SPARE_NODES=K of the select=N nodes are held as spares (select=3 with
# SPARE_NODES=1 trains on 2). Else the successor is placed away from the node.
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
source launch/jobs.sh && job_begin pbs   # signals handled from here on; OVERRIDES, PYTHON, RUN_NAME, ...: there

CONFIG=${CONFIG:-configs/cnn.yaml}        # the run's YAML
RANKS_PER_NODE=${RANKS_PER_NODE:-1}       # one per GPU

# Your modules and environment: edit launch/pbs.sh, not this file.
source launch/pbs.sh

# The pre-flight check (python -m hpc_mnist.doctor; DOCTOR=0 skips it), then the training, through the same
# launch; a walltime stop submits the job that continues the run: train_job in launch/jobs.sh.
train_job pbs
