# shellcheck shell=bash
# OLCF Frontier site settings: sourced by jobscripts/frontier.sh and by `python -m hpc_mnist.launch`.
# 8 GCDs (MI250X) per node; ROCm PyTorch uses the cuda device API and the nccl backend (RCCL).
#
# The ROCm module must match the ROCm your PyTorch wheel was built for: OLCF pins the pair (rocm/7.1.1 with
# torch from https://download.pytorch.org/whl/rocm7.1, on PrgEnv-gnu/8.7.0 and cpe/26.03). Change the
# versions here together with your wheel. First-job checks (the job log shows them): no "hpc_mnist:" error
# line from this file; `python -c "import torch; print(torch.version.hip)"` on a compute node starts with
# HPC_MNIST_ROCM; submit once with NCCL_DEBUG=INFO and look for the OFI (libfabric) network in the log.

# shellcheck source=launch/modules.sh
source "$(dirname "${BASH_SOURCE[0]}")/modules.sh"
frontier_modules() {
    module load "PrgEnv-gnu/${HPC_MNIST_PRGENV:-8.7.0}" "cpe/${HPC_MNIST_CPE:-26.03}" || return
    # rccl-net-plugin after rocm (OLCF); it also sets the libfabric variables RCCL needs (FI_CXI_RDZV_PROTO=alt_read
    # goes with the job's --network=disable_rdzv_get: see jobscripts/frontier.sh and hpc_mnist/runtime/systems.py).
    module load "rocm/${HPC_MNIST_ROCM:-7.1.1}" craype-accel-amd-gfx90a rccl-net-plugin || return
}
load_site_modules frontier_modules "${BASH_SOURCE[0]}" || return
# A non-default CPE: its libraries come first (OLCF).
export LD_LIBRARY_PATH="${CRAY_LD_LIBRARY_PATH:-}${CRAY_LD_LIBRARY_PATH:+:}${LD_LIBRARY_PATH:-}"
# Frontier has no site PyTorch module: point HPC_MNIST_VENV at your ROCm PyTorch environment.
activate_venv

# MIOpen (the CNN's convolutions) keeps its databases under $HOME by default, and many ranks writing there
# gives "Disk I/O" errors: OLCF puts them on node-local /tmp. jobscripts/frontier.sh creates the folder on
# every node (by hand in salloc: srun --ntasks-per-node=1 mkdir -p "$MIOPEN_USER_DB_PATH").
export MIOPEN_USER_DB_PATH=${MIOPEN_USER_DB_PATH:-/tmp/miopen-cache-${USER:-hpc_mnist}}
export MIOPEN_CUSTOM_CACHE_DIR=$MIOPEN_USER_DB_PATH
if [ -z "${HPC_MNIST_DRY_RUN:-}" ]; then mkdir -p "$MIOPEN_USER_DB_PATH"; fi

export NCCL_SOCKET_IFNAME=hsn0,hsn1,hsn2,hsn3   # if jobs hang in RCCL set-up, try hsn0 alone (OLCF)
export FI_MR_CACHE_MONITOR=userfaultfd
# mpi4py, where used, must be imported before torch (OLCF: "Unable to use a NIC_POLICY of 'NUMA'"); under
# srun the trainer needs no mpi4py.

export HPC_MNIST_SITE=frontier
