"""Everything about ranks lives here: launcher detection, process-group set-up, device and thread
choice, and the few collectives the trainer needs. Other modules ask `is_main()` or call these
helpers instead of testing rank numbers themselves.
"""

from __future__ import annotations

import datetime
import gc
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from hpc_mnist.core.config import DistConfig
from hpc_mnist.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    """Where this process sits in the job and what it computes on."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    launcher: str  # torchrun | mpi | slurm | none
    device: torch.device
    backend: str | None  # None for a single process
    threads: int
    hosts: tuple[str, ...] = ()  # every rank's host name, by rank
    threads_why: str = ""  # who chose the thread count (start panel)
    pids: tuple[int, ...] = ()  # every rank's process id, by rank (to name a rank that died)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        """Distinct hosts (uneven layouts such as srun -N2 -n3 included)."""
        return len(set(self.hosts)) if self.hosts else max(1, self.world_size // self.local_world_size)


@dataclass(frozen=True)
class Placement:
    """Rank numbers as a launcher reported them, before any process group exists."""

    launcher: str  # torchrun | mpi | slurm | none
    rank: int = 0
    local_rank: int | None = 0  # None: the launcher did not say (MPI asks mpi4py)
    world_size: int = 1
    local_world_size: int | None = 1


def _env_int(*names: str) -> int | None:
    """The first of `names` set in the environment, as an int."""
    for name in names:
        value = os.environ.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                raise UserError(f"environment variable {name}={value!r} is not an integer; check the launch line") \
                    from None
    return None


def _torchrun_env() -> Placement | None:
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = _env_int("WORLD_SIZE")
    return Placement("torchrun", _env_int("RANK"), _env_int("LOCAL_RANK") or 0, world,
                     _env_int("LOCAL_WORLD_SIZE") or world)


def _mpi_env() -> Placement | None:
    """Ranks as Open MPI, PMIx, Cray PALS or PMI (MPICH Hydra, Intel MPI) export them."""
    rank = _env_int("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PALS_RANKID", "PMI_RANK")
    if rank is None:
        return None
    return Placement(
        "mpi", rank,
        _env_int("OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_LOCAL_RANK", "PALS_LOCAL_RANKID", "PMI_LOCAL_RANK",
                 "MPI_LOCALRANKID"),
        _env_int("OMPI_COMM_WORLD_SIZE", "PMI_SIZE") or 0,  # 0: unknown until mpi4py says
        _env_int("OMPI_COMM_WORLD_LOCAL_SIZE", "PALS_LOCAL_SIZE", "PMI_LOCAL_SIZE", "MPI_LOCALNRANKS"),
    )


def tasks_per_node(layout: str) -> list[int]:
    """Slurm's per-node task counts, e.g. '2(x3),1' -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in layout.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise UserError(f"cannot read the Slurm task layout {layout!r} (SLURM_STEP_TASKS_PER_NODE)")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def _slurm_env() -> Placement | None:
    """An srun step's ranks. A batch shell exports SLURM_PROCID too, but only a step has SLURM_STEP_ID.

    The local world size comes from the step's layout and this task's node, so uneven steps such as
    `srun -N2 -n3` (layout '2,1') work; tasks / nodes only where Slurm gives no layout.
    """
    if "SLURM_STEP_ID" not in os.environ or "SLURM_PROCID" not in os.environ:
        return None
    world = _env_int("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or 1
    nodes = _env_int("SLURM_STEP_NUM_NODES", "SLURM_NNODES") or 1
    local_size = max(1, world // nodes)
    layout = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE")
    node = _env_int("SLURM_NODEID")
    if layout and node is not None:
        counts = tasks_per_node(layout)
        if 0 <= node < len(counts):
            local_size = counts[node]
    return Placement("slurm", _env_int("SLURM_PROCID"), _env_int("SLURM_LOCALID") or 0, world, local_size)


def detect(init: str = "auto") -> Placement:
    """Ranks from the launcher's environment; no communication happens here.

    auto: torchrun's variables win (under `mpiexec ... torchrun`, PMI_RANK is the node index); then an MPI
    launcher's; then an srun step's; else one process. srun acting as the MPI launcher counts as an srun
    step, so no mpi4py is needed there: its plugins set PMI_RANK and PMI_SIZE (pmi2), or a rank without a
    world size (PMIX_RANK for pmix, PALS_RANKID for cray_shasta), equal to SLURM_PROCID. An MPI launcher
    started through srun (Hydra, Open MPI) has ranks that differ from the step's.
    """
    found = {"torchrun": _torchrun_env(), "mpi": _mpi_env(), "slurm": _slurm_env()}
    if init == "auto":
        mpi, slurm = found["mpi"], found["slurm"]
        if mpi and slurm and mpi.rank == slurm.rank and mpi.world_size in (0, slurm.world_size):
            found["mpi"] = None
        init = next((name for name, place in found.items() if place), "none")
    if init == "none":
        launched = next(((name, place) for name, place in found.items() if place and (place.world_size or 0) > 1), None)
        if launched:  # each process would train alone, all of them in one run directory
            raise UserError(f"dist.init=none, but this process is rank {launched[1].rank} of {launched[1].world_size} "
                            f"started by {'srun' if launched[0] == 'slurm' else launched[0]}: drop dist.init=none (or "
                            "set dist.init=auto), or start one process")
        return Placement("none")
    if init == "mpi":
        return found["mpi"] or Placement("mpi", 0, None, 0, None)  # mpi4py supplies the numbers
    place = found[init]
    if place is None:
        need, how = {"torchrun": ("RANK/WORLD_SIZE", "start with torchrun"),
                     "slurm": ("SLURM_STEP_ID/SLURM_PROCID", "start with srun inside the allocation")}[init]
        raise UserError(f"dist.init={init} but {need} are not set: {how}, or use dist.init=auto")
    _check_placement(place)
    return place


def _check_placement(place: Placement) -> None:
    local_ok = place.local_rank is None or place.local_world_size is None or \
        0 <= place.local_rank < place.local_world_size
    if not (0 <= place.rank < place.world_size and local_ok):
        raise UserError(f"inconsistent {place.launcher} variables: rank {place.rank}, local rank {place.local_rank}, "
                        f"world size {place.world_size}, local world size {place.local_world_size}")


def guess_rank() -> int:
    """This process's rank before set-up, so errors found early are printed once."""
    try:
        return detect().rank
    except UserError:
        return 0


def select_device(name: str, local_rank: int, local_world_size: int | None = None) -> torch.device:
    """auto: cuda, xpu, mps, then cpu."""
    available = {
        "cuda": torch.cuda.is_available(),
        "xpu": hasattr(torch, "xpu") and torch.xpu.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(kind for kind, ok in available.items() if ok)
    elif not available[name]:
        raise UserError(f"train.device={name} but no {name} device is available here; use train.device=auto")
    if name in ("cuda", "xpu"):
        return torch.device(name, device_index(local_rank, getattr(torch, name).device_count(), local_world_size))
    return torch.device(name)


def device_index(local_rank: int, visible: int, local_world_size: int | None = None) -> int:
    """GPU index for a rank: 0 when it sees one GPU (CUDA_VISIBLE_DEVICES or --gpus-per-task set per
    rank); else its local rank among the node's GPUs, spread evenly when the node runs fewer ranks than it
    has GPUs (6 ranks on Aurora's 12 tiles take tiles 0, 2, ... 10, on both sockets, as their CPU binding
    does, instead of tiles 0-5 on socket 0)."""
    if visible == 1:
        return 0
    if local_world_size and local_world_size < visible:
        return local_rank * (visible // local_world_size)
    return local_rank % visible


def chosen_threads() -> str | None:
    """OMP_NUM_THREADS where a user or a launcher chose it (torchrun sets 1 for several processes per node).

    PBS sets OMP_NUM_THREADS to the chunk's ncpus (NCPUS) in every job, whatever `qsub -v` says: that is the
    size of the node, not a choice for each of its ranks, so it does not count. A different value (the user's
    export, or PBS's `ompthreads` resource) does.
    """
    value = os.environ.get("OMP_NUM_THREADS") or None
    if value and os.environ.get("PBS_JOBID") and value == os.environ.get("NCPUS"):
        return None
    return value


def set_cpu_threads(local_world_size: int) -> tuple[int, str]:
    """Split this node's cores among its ranks unless the user (or launcher) chose; (threads, why).

    Oversubscribed intra-op threads made a tiny MLP step about 100x slower on 2 shared cores.
    """
    chosen = chosen_threads()
    if chosen:
        return torch.get_num_threads(), f"OMP_NUM_THREADS={chosen}"
    bound = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # A launcher that pinned us to a core subset has already divided the node.
    pinned = bound < (os.cpu_count() or bound)
    share = bound if pinned else bound // local_world_size
    why = f"its {bound} bound core(s)" if pinned else f"its share of {bound} core(s) among {local_world_size} rank(s)"
    others = busy_cores(local_world_size) if share > 1 and not pinned else 0  # one thread cannot be fewer
    fewer = max(1, (bound - others) // local_world_size)
    if fewer < share:
        # Threads that wait for cores others hold spin and collapse: on 2 cores with 2 busy processes, an MLP
        # epoch ran at 6,959 samples/s with 2 threads and 59,200 with 1 (benchmarks/threads-under-load.md).
        # Said, not done: the thread count may change a kernel's summation order, and a run's segments must
        # compute alike for exact resume.
        why += (f"; {others} core(s) busy with other work: OMP_NUM_THREADS={fewer} may run many times faster")
    torch.set_num_threads(max(1, share))
    if os.environ.get("OMP_NUM_THREADS"):
        why += f"; PBS's OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} is the chunk's ncpus, not a choice"
    return torch.get_num_threads(), why


def busy_cores(own_processes: int = 1) -> int:
    """Cores that other work keeps busy now: the runnable tasks the kernel counts (/proc/stat procs_running,
    median of 5 looks over 40 ms) less this node's own ranks; 0 where it cannot be read."""
    looks = []
    for i in range(5):
        try:
            with open("/proc/stat") as f:
                looks.append(next(int(line.split()[1]) for line in f if line.startswith("procs_running")))
        except (OSError, StopIteration, ValueError):
            return 0
        if i < 4:
            time.sleep(0.01)
    return min(max(0, sorted(looks)[2] - own_processes), os.cpu_count() or 1)  # tasks may outnumber cores


def _backend(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    return {"cuda": "nccl", "xpu": "xccl"}.get(device.type, "gloo")


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


def _mpi_rendezvous(place: Placement) -> Placement:
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
    _check_placement(resolved)
    return resolved


def _slurm_rendezvous() -> None:
    """Master = first host of the step; port derived from the job id so jobs sharing a node differ."""
    nodes = os.environ.get("SLURM_STEP_NODELIST") or os.environ.get("SLURM_JOB_NODELIST")
    if "MASTER_ADDR" not in os.environ:
        if not nodes:
            raise UserError("inside an srun step but SLURM_JOB_NODELIST is not set; set MASTER_ADDR")
        os.environ["MASTER_ADDR"] = first_host(nodes)
    os.environ.setdefault("MASTER_PORT", str(20000 + (_env_int("SLURM_JOB_ID") or 0) % 10000))


def _restart_store(place: Placement, timeout: datetime.timedelta) -> tdist.Store | None:
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


def _store(place: Placement, timeout: datetime.timedelta) -> tdist.Store:
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


def debug_environment(run_dir: str) -> None:
    """log.debug: the variables NCCL and torch.distributed read at start-up (set before the process group)."""
    os.environ.setdefault("NCCL_DEBUG", "INFO")
    os.environ.setdefault("NCCL_DEBUG_FILE", os.path.join(run_dir, "nccl-%h-%p.log"))
    os.environ.setdefault("TORCH_DISTRIBUTED_DEBUG", "DETAIL")


def setup(cfg: DistConfig, device_name: str) -> Runtime:
    """Detect the launcher, pick the device, and join the process group when there are peers."""
    place = detect(cfg.init)
    if place.launcher == "mpi":
        place = _mpi_rendezvous(place)
    elif place.launcher == "slurm" and place.world_size > 1:
        _slurm_rendezvous()
    device = select_device(device_name, place.local_rank, place.local_world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "xpu":
        torch.xpu.set_device(device)
    threads, threads_why = set_cpu_threads(place.local_world_size)
    backend = None
    if place.world_size > 1:
        backend = _backend(cfg.backend, device)
        if backend == "nccl":  # PyTorch's flight recorder: what each rank's NCCL was doing when a collective hung
            os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000")
            os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")
        init_timeout = datetime.timedelta(seconds=cfg.init_timeout)  # joining: short; collectives: cfg.timeout
        store = _restart_store(place, init_timeout) or _store(place, init_timeout)
        tdist.init_process_group(backend=backend, store=store, rank=place.rank, world_size=place.world_size,
                                 timeout=datetime.timedelta(seconds=cfg.timeout))
    hosts, pids = zip(*all_gather_object((socket.gethostname(), os.getpid())), strict=True)
    return Runtime(place.rank, place.local_rank, place.world_size, place.local_world_size, place.launcher,
                   device, backend, threads, hosts, threads_why, pids)


def shutdown() -> None:
    """Destroy the process group, after collecting what no longer has a name: a dropped DDP model sits in a
    reference cycle, and its reducer's last gloo work freed during interpreter shutdown aborts the process
    ("terminate called without an active exception", pytorch/pytorch#179291; seen once in CI, comm)."""
    gc.collect()
    if tdist.is_initialized():
        tdist.destroy_process_group()


def is_main() -> bool:
    return not tdist.is_initialized() or tdist.get_rank() == 0


def rank_and_size() -> tuple[int, int]:
    """(rank, world size) of the running group; (0, 1) for a single process."""
    return (tdist.get_rank(), tdist.get_world_size()) if tdist.is_initialized() else (0, 1)


def store() -> tdist.Store | None:
    """The default group's rendezvous store, which every rank already reaches (None for one process): where
    ranks leave notes for each other when a collective cannot be trusted (hang.py, peers.py)."""
    # A private accessor, stable since torch 1.x.
    return tdist.distributed_c10d._get_default_store() if tdist.is_initialized() else None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum in place across ranks (a no-op for one process)."""
    if tdist.is_initialized():
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def any_rank(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum across ranks: a flag raised on one rank is seen by all."""
    if tdist.is_initialized():
        tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
    return flags


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, indexed by rank."""
    if not tdist.is_initialized():
        return [obj]
    out: list[Any] = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not tdist.is_initialized():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result, or its UserError, to every rank.

    Used for work one rank must do while the others wait (downloads, creating the run directory):
    a failure there then stops every rank with the same message instead of leaving peers hanging.
    """
    outcome: tuple[Any, tuple[str, int] | None] = (None, None)
    if is_main():
        try:
            outcome = (fn(), None)
        except UserError as e:
            outcome = (None, (str(e), e.exit_code))
    result, error = broadcast_object(outcome)
    if error is not None:
        raise UserError(error[0], error[1], on_all_ranks=True)
    return result


def report_error(error: UserError) -> None:
    """One line on stderr: from rank 0 for errors every rank shares, else from the rank that hit it."""
    rank = tdist.get_rank() if tdist.is_initialized() else guess_rank()
    if rank == 0 or not error.on_all_ranks:
        prefix = "hpc_mnist: error: " if rank == 0 else f"hpc_mnist: error (rank {rank}): "
        print(prefix + str(error), file=sys.stderr, flush=True)
