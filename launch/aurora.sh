# shellcheck shell=bash
# ALCF Aurora site settings: sourced by jobscripts/aurora.sh and by `python -m hpc_mnist.launch`.
# 6 GPUs x 2 tiles = 12 xpu devices per node; PyTorch from the frameworks module, backend xccl.
#
# xccl needs the frameworks module 2025.2 or later (older ones only have `ccl` through
# oneccl_bindings_for_pytorch, which this project does not use): this file stops with one line on an older one.
# Pin a version with HPC_MNIST_FRAMEWORKS (e.g. frameworks/2025.3.1) to keep results comparable.
# First-job checks (the job log shows them): no "hpc_mnist:" error line from this file; the trainer's start
# line names 12 ranks per node on xpu with backend xccl.

# shellcheck source=launch/modules.sh
source "$(dirname "${BASH_SOURCE[0]}")/modules.sh"
aurora_modules() {
    module load "${HPC_MNIST_FRAMEWORKS:-frameworks}" || return
}
load_site_modules aurora_modules "${BASH_SOURCE[0]}" || return
if [ -z "${HPC_MNIST_DRY_RUN:-}" ] && [[ ":${LOADEDMODULES:-}:" =~ :frameworks/([0-9]+)\.([0-9]+) ]] &&
        (( 10#${BASH_REMATCH[1]} * 100 + 10#${BASH_REMATCH[2]} < 202502 )); then
    echo "hpc_mnist: frameworks/${BASH_REMATCH[1]}.${BASH_REMATCH[2]} is loaded but the xccl backend needs" \
         "frameworks 2025.2 or later: set HPC_MNIST_FRAMEWORKS=frameworks/<newer> (see 'module avail frameworks')" >&2
    return 1
fi
activate_venv

export HPC_MNIST_MASTER_DOMAIN=${HPC_MNIST_MASTER_DOMAIN-hsn.cm.aurora.alcf.anl.gov}
export ZE_FLAT_DEVICE_HIERARCHY=FLAT     # each tile is its own xpu device
# oneCCL through MPI (ALCF's recommended settings for PyTorch DDP).
export CCL_PROCESS_LAUNCHER=pmix
export CCL_ATL_TRANSPORT=mpi
export CCL_KVS_MODE=mpi
export FI_MR_CACHE_MONITOR=userfaultfd
# The CPU binding (hpc_mnist/runtime/systems.py) is ALCF's list for 12 ranks per node and is built for any other
# --ppn: half the ranks on each socket, equal blocks of cores, cores 0 and 52 left to the system.

export HPC_MNIST_SITE=aurora
