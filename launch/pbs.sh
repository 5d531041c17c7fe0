# shellcheck shell=bash
# Generic PBS cluster: load your site's PyTorch and MPI here (module, conda or venv).
# shellcheck source=/dev/null
if [ -n "${HPC_MNIST_VENV:-}" ]; then source "$HPC_MNIST_VENV/bin/activate"; fi

export HPC_MNIST_SITE=pbs
