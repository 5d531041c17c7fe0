#!/bin/bash -l
# hpc_mnist on ALCF Polaris (PBS Pro): 4 A100 per node, one rank per GPU, NCCL over Slingshot.
#   qsub jobscripts/polaris.sh
#   qsub -v CONFIG=configs/mlp.yaml,OVERRIDES="train.epochs=10 optim.lr=0.1" jobscripts/polaris.sh
# Edit below: -A (your project, required), -q, select=N (nodes), walltime. Queues (ALCF): debug 1-2 nodes, 1 h
# (first jobs); debug-scaling 1-10 nodes, 1 h; preemptable 1-10 nodes, 72 h, may be killed at any time (fine
# for checkpointed runs: add `#PBS -r y` and resubmit with the same RUN_NAME); capacity 1-4 nodes, 168 h;
# prod 10-496 nodes (routed by size and walltime: a job that fits no execution queue, e.g. 10 nodes for more
# than 3 h, is dropped without an error: check `qstat -u $USER` after qsub). Submit from a folder on the
# project's file system (/lus/eagle/projects/<project>/...), where runs/ and data/ are written.
# Output: runs/<job id>/ (metrics, TensorBoard, summary) and the job log.
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
#PBS -l select=2:system=polaris
#PBS -l place=scatter
#PBS -l walltime=00:30:00
#PBS -l filesystems=home:eagle
#PBS -k doe
#PBS -j oe
#PBS -N hpc_mnist
trap '' USR1 USR2   # at once: a short job's time-limit warning can come before job_begin below
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
source launch/jobs.sh && job_begin pbs   # signals handled from here on; OVERRIDES, PYTHON, RUN_NAME, ...: there

CONFIG=${CONFIG:-configs/cnn.yaml}        # the run's YAML
RANKS_PER_NODE=${RANKS_PER_NODE:-4}       # one per A100

# Modules, conda and the NCCL/libfabric settings: edit launch/polaris.sh, not this file. It loads the modules
# with nounset off (conda's activate scripts read unset variables) and stops with one line if a load fails.
source launch/polaris.sh

# The pre-flight check (python -m hpc_mnist.doctor; DOCTOR=0 skips it), then the training, through the same
# launch; a walltime stop submits the job that continues the run: train_job in launch/jobs.sh.
train_job polaris
