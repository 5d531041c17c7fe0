# shellcheck shell=bash
# Generic Slurm cluster: load your site's PyTorch here (module, conda or venv), for example
#     module load <your PyTorch> || return
# inside generic_modules below, which runs with nounset off (see launch/modules.sh).

# shellcheck source=launch/modules.sh
source "$(dirname "${BASH_SOURCE[0]}")/modules.sh"
generic_modules() {
    :   # module load ... || return
}
if command -v module >/dev/null 2>&1; then load_site_modules generic_modules "${BASH_SOURCE[0]}" || return; fi
# shellcheck source=/dev/null
if [ -n "${HPC_MNIST_VENV:-}" ]; then source "$HPC_MNIST_VENV/bin/activate"; fi

export HPC_MNIST_SITE=slurm
