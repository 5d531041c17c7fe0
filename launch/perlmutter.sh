# shellcheck shell=bash
# NERSC Perlmutter site settings: sourced by jobscripts/perlmutter.sh and by `python -m hpc_mnist.launch`.
#
# First-job checks (the job log shows them): no "hpc_mnist:" error line from this file, and NCCL's transport:
# submit once with `sbatch --export=ALL,NCCL_DEBUG=INFO ...` and look for "Using network AWS Libfabric".

# shellcheck source=launch/modules.sh
source "$(dirname "${BASH_SOURCE[0]}")/modules.sh"
perlmutter_modules() {
    module load "${HPC_MNIST_PYTORCH:-pytorch}" || return   # pin one (module avail pytorch) for comparable results
}
load_site_modules perlmutter_modules "${BASH_SOURCE[0]}" || return
activate_venv

# NCCL over Slingshot through the libfabric (OFI) plugin, the settings NERSC's nccl-ofi-plugin sets. Without
# the plugin NCCL silently uses TCP sockets; with NCCL_NET named it fails at start instead ("Failed to
# initialize any NET plugin"): then load the plugin's module (module spider nccl) or, to run anyway over
# sockets, submit with NCCL_NET=Socket. If a multi-node job hangs in NCCL set-up, delete the
# NCCL_NET_GDR_LEVEL line first (on Polaris, the same A100 + Slingshot design, PHB hangs PyTorch).
export NCCL_NET=${NCCL_NET-AWS Libfabric}
export NCCL_SOCKET_IFNAME=hsn
export NCCL_NET_GDR_LEVEL=PHB
export NCCL_CROSS_NIC=1
export FI_CXI_DISABLE_HOST_REGISTER=1
export FI_MR_CACHE_MONITOR=userfaultfd

export HPC_MNIST_SITE=perlmutter
