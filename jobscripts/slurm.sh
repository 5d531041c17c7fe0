#!/bin/bash
# hpc_mnist on a generic Slurm cluster: one task per GPU on every node.
#   sbatch jobscripts/slurm.sh
#   sbatch --export=ALL,CONFIG=configs/mlp.yaml,OVERRIDES="train.epochs=10" jobscripts/slurm.sh
# Edit below: account, partition, nodes, tasks and GPUs per node, time limit; load your PyTorch in
# launch/slurm.sh.
#SBATCH -A YOUR_ACCOUNT
#SBATCH -p YOUR_PARTITION
#SBATCH -N 2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH -t 00:30:00
#SBATCH -J hpc_mnist
#SBATCH -o hpc_mnist-%j.out
#SBATCH --signal=B:USR1@120
# --signal: Slurm sends USR1 to this shell 120 s before the time limit; it is forwarded to the ranks.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"

CONFIG=${CONFIG:-configs/cnn.yaml}        # the run's YAML
OVERRIDES=${OVERRIDES:-}                  # extra section.key=value words
RANKS_PER_NODE=${RANKS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-1}}
PYTHON=${PYTHON:-python}

# Modules and network settings: edit launch/slurm.sh, not this file.
source launch/slurm.sh

# A bash trap runs only once the foreground command returns, so the launch runs in the background
# and this shell waits, forwarding signals to it (the launcher becomes srun, which passes them on).
# shellcheck disable=SC2086  # OVERRIDES is a list of words on purpose
"$PYTHON" -m hpc_mnist.launch --system slurm --ppn "$RANKS_PER_NODE" -- \
    "$PYTHON" -m hpc_mnist.train --config "$CONFIG" $OVERRIDES &
pid=$!
trap 'kill -USR1 "$pid" 2>/dev/null || true' USR1
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM
status=0
while :; do
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null || break   # still running: wait was interrupted by a signal
done
exit "$status"
