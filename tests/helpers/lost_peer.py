"""Test helper: one of three ranks, started as srun starts them (RANK, WORLD_SIZE, MASTER_*: one ending ends none
of the others; rank 0 holds the store), that meets a lost peer as the trainer does.

Rank 2 ends at once. Rank 0 then decides who is lost (peers.lost_error), writes status.json as the controller
does and ends; rank 1 decides only after rank 0's process has gone: the order the CI's load once gave the Slurm
lab. Each prints its line.

Usage: python lost_peer.py RUN_DIR
"""

import os
import sys
import time
from pathlib import Path

import torch.distributed as tdist

from hpc_mnist.core.config import DistConfig
from hpc_mnist.runtime import dist, peers, rundir, status

run_dir = Path(sys.argv[1])
rt = dist.setup(DistConfig(timeout=30, init_timeout=60, quiet_after=0), "cpu")
tdist.barrier()
if rt.rank == 2:
    os._exit(9)
for rank in (2, 0) if rt.rank == 1 else (2,):
    while peers.process_exists(rt.pids[rank]):
        time.sleep(0.05)
# What gloo raises in a collective whose peer has gone (the collective itself is left out: rank 0 might wait in
# it for rank 1, which here waits for rank 0 to end).
lost = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:29500")
error = peers.lost_error(rt, lost, "in the test", lambda: status.read(run_dir / status.NAME))
if rt.is_main or not error.on_all_ranks:  # the controller's rule (RunController._failed)
    rundir.write_status(run_dir, "failed", **error.status, exit_code=error.exit_code)
print(error, flush=True)
os._exit(error.exit_code)
