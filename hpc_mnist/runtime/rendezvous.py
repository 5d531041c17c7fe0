"""Finding rank 0: its address and port (MASTER_ADDR, MASTER_PORT) where the launcher does not export them, and
the key-value store every rank joins there before the process group exists."""

from __future__ import annotations

import datetime
import os
import re
import socket

import torch.distributed as tdist

from hpc_mnist.errors import UserError
from hpc_mnist.runtime.launchers import Placement, check_placement, env_int


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list such as 'nid[001-004,010],nid020' (without calling scontrol)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise UserError(f"cannot read the Slurm node list {nodelist!r}; set MASTER_ADDR to the first node's name")
    prefix, ranges = match.groups()
    return prefix + re.split(r"[,-]", ranges)[0] if ranges else prefix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _master_host() -> str:
    """This host's name; on ALCF systems the high-speed-network name (the site file sets the domain)."""
    name = socket.gethostname()
    domain = os.environ.get("HPC_MNIST_MASTER_DOMAIN")
    return f"{name.split('.')[0]}.{domain}" if domain else name


def mpi_rendezvous(place: Placement) -> Placement:
    """Check the launcher's numbers against mpi4py, then share rank 0's address and a free port."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError("an MPI launch was detected but mpi4py cannot be imported: load the site's mpi4py "
                        "(or pip install 'hpc_mnist[mpi]' off clusters), or launch with torchrun",
                        on_all_ranks=True) from None
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if place.world_size and (place.rank, place.world_size) != (rank, size):
        raise UserError(f"the launcher's variables say rank {place.rank} of {place.world_size} but mpi4py says rank "
                        f"{rank} of {size}: mpi4py was built for another MPI than this launcher's (use the site's "
                        "mpi4py), or variables from another launch leaked into the environment")
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank = node.Get_rank() if place.local_rank is None else place.local_rank
    local_size = node.Get_size() if place.local_world_size is None else place.local_world_size
    endpoint = None
    if rank == 0:
        endpoint = (os.environ.get("MASTER_ADDR") or _master_host(), os.environ.get("MASTER_PORT") or str(_free_port()))
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = comm.bcast(endpoint, root=0)
    resolved = Placement("mpi", rank, local_rank, size, local_size)
    check_placement(resolved)
    return resolved


def slurm_rendezvous() -> None:
    """Master = first host of the step; port derived from the job id so jobs sharing a node differ."""
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if "MASTER_ADDR" not in os.environ:
        if not nodes:
            raise UserError("inside an srun step but SLURM_JOB_NODELIST is not set; set MASTER_ADDR")
        os.environ["MASTER_ADDR"] = first_host(nodes)
    os.environ.setdefault("MASTER_PORT", str(20000 + (env_int("SLURM_JOB_ID") or 0) % 10000))


def restart_store(place: Placement, timeout: datetime.timedelta) -> tdist.Store | None:
    """Under torchrun the agent hosts the rendezvous store and keeps it when it restarts failed workers.

    Restarted ranks then raced their predecessors' stale gloo/NCCL addresses in it and failed with
    "Connection refused" (seen here with --max-restarts; cf. pytorch/pytorch#167288); a key prefix per
    restart keeps each attempt's rendezvous apart.
    """
    if place.launcher != "torchrun" or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = tdist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), place.world_size,
                           is_master=False, timeout=timeout)
    return tdist.PrefixStore(f"hpc_mnist/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def open_store(place: Placement, timeout: datetime.timedelta) -> tdist.Store:
    """The rendezvous store on rank 0's MASTER_ADDR:MASTER_PORT, as env:// would make it, but with the start-up
    timeout: a rank that never starts fails the job in minutes, not after the collective timeout."""
    try:
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    except (KeyError, ValueError):
        raise UserError("MASTER_ADDR and MASTER_PORT must name rank 0's host and a free port") from None
    try:
        return tdist.TCPStore(host, port, place.world_size, is_master=place.rank == 0, timeout=timeout)
    except (RuntimeError, OSError) as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"rank {place.rank} could not join the job's rendezvous at {host}:{port} within "
                        f"{timeout.total_seconds():g} s (dist.init_timeout): {first}") from None
