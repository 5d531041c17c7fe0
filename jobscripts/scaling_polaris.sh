#!/bin/bash -l
# Scaling study on ALCF Polaris (PBS Pro): one allocation of N nodes runs the same training on 1, 2, 4,
# ... N nodes (4 ranks per node), then writes the report (scaling.md, scaling.csv, PNG plots) into
#   runs/scaling-<job id>/
#   qsub jobscripts/scaling_polaris.sh
#   qsub -v MODE=strong,BATCH=4096,NODES=1,2,4 jobscripts/scaling_polaris.sh
# Edit below: -A (your project), -q (debug-scaling: up to 10 nodes), select=N, walltime.
#PBS -A YOUR_PROJECT
#PBS -q debug-scaling
#PBS -l select=8:system=polaris
#PBS -l place=scatter
#PBS -l walltime=01:00:00
#PBS -l filesystems=home:eagle
#PBS -k doe
#PBS -j oe
#PBS -N hpc_mnist_scaling
trap '' USR1 USR2   # at once: a short job's time-limit warning can come before job_begin below
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
source launch/jobs.sh && job_begin pbs   # signals handled from here on; OVERRIDES, PYTHON, ...: there

CONFIG=${CONFIG:-configs/cnn.yaml}        # the training every point runs (OVERRIDES: words for every point)
RANKS_PER_NODE=${RANKS_PER_NODE:-4}
SWEEP_DIR=${SWEEP_DIR:-runs/scaling-${PBS_JOBID%%.*}}   # one folder per job: points, logs, report

source launch/polaris.sh

# The sweep's settings, from the submission or set here (scaling_job in launch/jobs.sh): NODES (default 1, 2, 4,
# ... and the allocation), MODE (weak: BATCH per rank; strong: BATCH global; default weak), BATCH (128), EPOCHS
# (2), REPEATS (1), PREDICT (1: then time the all-reduce at the two smallest points of more than one rank, fit the model
# there and put its prediction and error beside each point).
allocated=$(sort -u "$PBS_NODEFILE" | wc -l)
scaling_job polaris "$allocated"
