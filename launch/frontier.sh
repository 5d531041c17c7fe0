# shellcheck shell=bash
# OLCF Frontier site settings: sourced by jobscripts/frontier.sh and by `python -m hpc_mnist.launch`.
# 8 GCDs (MI250X) per node; ROCm PyTorch uses the cuda device API and the nccl backend (RCCL).
if command -v module >/dev/null 2>&1; then
    module load PrgEnv-gnu rocm craype-accel-amd-gfx90a rccl-net-plugin
fi
# Frontier has no site PyTorch module: point HPC_MNIST_VENV at your ROCm PyTorch environment.
# shellcheck source=/dev/null
if [ -n "${HPC_MNIST_VENV:-}" ]; then source "$HPC_MNIST_VENV/bin/activate"; fi

export NCCL_SOCKET_IFNAME=hsn0,hsn1,hsn2,hsn3
export FI_MR_CACHE_MONITOR=userfaultfd

export HPC_MNIST_SITE=frontier
