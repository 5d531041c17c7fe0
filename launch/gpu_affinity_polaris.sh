#!/bin/bash
# Give each rank one A100 before Python (and MPI) start: Cray MPICH does not bind GPUs.
# Reverse order (3 - local rank) matches Polaris's CPU-to-GPU topology, per ALCF.
local_rank=${PMI_LOCAL_RANK:-${PALS_LOCAL_RANKID:-${MPI_LOCALRANKID:-0}}}
export CUDA_VISIBLE_DEVICES=$((3 - local_rank % 4))
exec "$@"
