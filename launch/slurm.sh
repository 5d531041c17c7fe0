# shellcheck shell=bash
# Generic Slurm cluster: load your site's PyTorch here (module, conda or venv), for example
#     module load <your PyTorch> || return
# inside generic_modules below, which runs with nounset off (see launch/modules.sh).

# shellcheck source=launch/modules.sh
source "$(dirname "${BASH_SOURCE[0]}")/modules.sh"
generic_modules() {
    :   # module load ... || return
}
generic_site generic_modules "${BASH_SOURCE[0]}" || return

export HPC_MNIST_SITE=slurm
