# shellcheck shell=bash
# ALCF Polaris site settings: sourced by jobscripts/polaris.sh and by `python -m hpc_mnist.launch`.
# Edit here, not in Python. Source: ALCF user guides (Polaris, PyTorch, NCCL over Slingshot).
#
# First-job checks (the job log shows them):
#   - "hpc_mnist: loading the site modules failed" names the failed module: fix the lines below.
#   - NCCL uses the AWS libfabric plugin: submit once with `qsub -v NCCL_DEBUG=INFO ...` and look for
#     "Using network AWS Libfabric" in the log. If ALCF has moved the plugin (the path below), NCCL fails at
#     start ("Failed to initialize any NET plugin"): update the path.

# shellcheck source=launch/modules.sh
source "$(dirname "${BASH_SOURCE[0]}")/modules.sh"
polaris_modules() {
    module use /soft/modulefiles || return
    module load conda || return
    conda activate base || return
}
load_site_modules polaris_modules "${BASH_SOURCE[0]}" || return
# Optional: a venv made with `python -m venv --system-site-packages` on top of the conda module.
activate_venv

# Rank 0's address for the process group is its high-speed-network name (short name + this domain).
export HPC_MNIST_MASTER_DOMAIN=${HPC_MNIST_MASTER_DOMAIN-hsn.cm.polaris.alcf.anl.gov}

# NCCL over Slingshot through the AWS libfabric plugin: 2-3x faster all-reduce per ALCF.
# If a multi-node job hangs in NCCL set-up, delete the NCCL_NET_GDR_LEVEL line first:
# ALCF's own tests found PHB is the setting that hangs PyTorch beyond one node. Do not unset all four NCCL_*
# variables: without NCCL_NET the OFI plugin is dropped and NCCL falls back to TCP sockets (slow, silently).
export NCCL_NET_GDR_LEVEL=PHB
export NCCL_CROSS_NIC=1
export NCCL_COLLNET_ENABLE=1
export NCCL_NET="AWS Libfabric"
export LD_LIBRARY_PATH="/soft/libraries/aws-ofi-nccl/v1.9.1-aws/lib:/soft/libraries/hwloc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FI_CXI_DISABLE_HOST_REGISTER=1
export FI_MR_CACHE_MONITOR=userfaultfd
export FI_CXI_DEFAULT_CQ_SIZE=131072
# Python multiprocessing under mpiexec: a long TMPDIR breaks AF_UNIX socket paths (ALCF known issues).
export TMPDIR=${TMPDIR:-/tmp}

export HPC_MNIST_SITE=polaris
