# shellcheck shell=bash
# NERSC Perlmutter site settings: sourced by jobscripts/perlmutter.sh and by `python -m hpc_mnist.launch`.
if command -v module >/dev/null 2>&1; then
    module load pytorch
fi
# shellcheck source=/dev/null
if [ -n "${HPC_MNIST_VENV:-}" ]; then source "$HPC_MNIST_VENV/bin/activate"; fi

export FI_MR_CACHE_MONITOR=userfaultfd

export HPC_MNIST_SITE=perlmutter
