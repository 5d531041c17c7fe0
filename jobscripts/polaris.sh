#!/bin/bash -l
# hpc_mnist on ALCF Polaris (PBS Pro): 4 A100 per node, one rank per GPU, NCCL over Slingshot.
#   qsub jobscripts/polaris.sh
#   qsub -v CONFIG=configs/mlp.yaml,OVERRIDES="train.epochs=10 optim.lr=0.1" jobscripts/polaris.sh
# Edit below: -A (your project, required), -q (debug: 1-2 nodes; debug-scaling: <= 10; prod: >= 10),
# select=N (nodes), walltime. Output: runs/<job id>/ (metrics, TensorBoard, summary) and the job log.
#PBS -A YOUR_PROJECT
#PBS -q debug
#PBS -l select=2:system=polaris
#PBS -l place=scatter
#PBS -l walltime=00:30:00
#PBS -l filesystems=home:eagle
#PBS -k doe
#PBS -j oe
#PBS -N hpc_mnist
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"

CONFIG=${CONFIG:-configs/cnn.yaml}        # the run's YAML
OVERRIDES=${OVERRIDES:-}                  # extra section.key=value words
RANKS_PER_NODE=${RANKS_PER_NODE:-4}       # one per A100
PYTHON=${PYTHON:-python}

# Modules, conda and the NCCL/libfabric settings: edit launch/polaris.sh, not this file.
source launch/polaris.sh

# PBS sends SIGTERM at the walltime (SIGKILL 10 s later) and no earlier warning.
# shellcheck disable=SC2086  # OVERRIDES is a list of words on purpose
"$PYTHON" -m hpc_mnist.launch --system polaris --ppn "$RANKS_PER_NODE" -- \
    "$PYTHON" -m hpc_mnist.train --config "$CONFIG" $OVERRIDES
