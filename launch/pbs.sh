# shellcheck shell=bash
# Generic PBS cluster: load your site's PyTorch and MPI here (module, conda or venv), for example
#     module load <your MPI> <your PyTorch> || return
# inside generic_modules below, which runs with nounset off (see launch/modules.sh).
#
# MPI flavour: `python -m hpc_mnist.launch --system pbs` asks `mpiexec --version`. MPICH, Cray PALS and Intel
# MPI get `mpiexec -n N --ppn P --hostfile $PBS_NODEFILE`; Open MPI, which has no --ppn, gets
# `mpiexec -n N --map-by ppr:P:node --hostfile $PBS_NODEFILE`. Set HPC_MNIST_MPI=openmpi or mpich to skip the
# question. Open MPI does not pass this shell's environment to ranks on other nodes: if they miss your venv or
# libraries, make sure the same lines run there (e.g. in ~/.bashrc) or export them with `-x NAME`.
# First-job check: `python -m hpc_mnist.launch --system pbs --dry-run` inside the job shows the line it runs.

# shellcheck source=launch/modules.sh
source "$(dirname "${BASH_SOURCE[0]}")/modules.sh"
generic_modules() {
    :   # module load ... || return
}
generic_site generic_modules "${BASH_SOURCE[0]}" || return

export HPC_MNIST_SITE=pbs
