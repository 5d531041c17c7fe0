# shellcheck shell=bash
# ALCF Aurora site settings: sourced by jobscripts/aurora.sh and by `python -m hpc_mnist.launch`.
# 6 GPUs x 2 tiles = 12 xpu devices per node; PyTorch from the frameworks module, backend xccl.
if command -v module >/dev/null 2>&1; then
    module load frameworks
fi
# shellcheck source=/dev/null
if [ -n "${HPC_MNIST_VENV:-}" ]; then source "$HPC_MNIST_VENV/bin/activate"; fi

export HPC_MNIST_MASTER_DOMAIN=${HPC_MNIST_MASTER_DOMAIN-hsn.cm.aurora.alcf.anl.gov}
export ZE_FLAT_DEVICE_HIERARCHY=FLAT     # each tile is its own xpu device
# oneCCL through MPI (ALCF's recommended settings for PyTorch DDP).
export CCL_PROCESS_LAUNCHER=pmix
export CCL_ATL_TRANSPORT=mpi
export CCL_KVS_MODE=mpi
export FI_MR_CACHE_MONITOR=userfaultfd

export HPC_MNIST_SITE=aurora
