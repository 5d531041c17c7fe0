# shellcheck shell=bash
# ALCF Polaris site settings: sourced by jobscripts/polaris.sh and by `python -m hpc_mnist.launch`.
# Edit here, not in Python. Source: ALCF user guides (Polaris, PyTorch, NCCL over Slingshot).
if command -v module >/dev/null 2>&1; then
    module use /soft/modulefiles
    module load conda
    conda activate base 2>/dev/null || true
fi
# Optional: a venv made with `python -m venv --system-site-packages` on top of the conda module.
# shellcheck source=/dev/null
if [ -n "${HPC_MNIST_VENV:-}" ]; then source "$HPC_MNIST_VENV/bin/activate"; fi

# Rank 0's address for the process group is its high-speed-network name (short name + this domain).
export HPC_MNIST_MASTER_DOMAIN=${HPC_MNIST_MASTER_DOMAIN-hsn.cm.polaris.alcf.anl.gov}

# NCCL over Slingshot through the AWS libfabric plugin: 2-3x faster all-reduce per ALCF.
# If a job hangs in NCCL set-up, unset the four NCCL_* variables below.
export NCCL_NET_GDR_LEVEL=PHB
export NCCL_CROSS_NIC=1
export NCCL_COLLNET_ENABLE=1
export NCCL_NET="AWS Libfabric"
export LD_LIBRARY_PATH="/soft/libraries/aws-ofi-nccl/v1.9.1-aws/lib:/soft/libraries/hwloc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export FI_CXI_DISABLE_HOST_REGISTER=1
export FI_MR_CACHE_MONITOR=userfaultfd
export FI_CXI_DEFAULT_CQ_SIZE=131072

export HPC_MNIST_SITE=polaris
