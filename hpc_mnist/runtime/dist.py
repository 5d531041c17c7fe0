"""The process group and the few collectives the trainer needs. Other modules ask `is_main()` or call these
helpers instead of testing rank numbers themselves.

`setup` puts together what the neighbouring modules find: the launcher's rank numbers (`launchers.py`), rank 0's
address (`rendezvous.py`), the device (`devices.py`) and the CPU threads (`cpus.py`).
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from hpc_mnist.core.config import DistConfig
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import cpus, devices, labels, launchers, rendezvous

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


def debug_environment(run_dir: str) -> None:
    """log.debug: the variables NCCL and torch.distributed read at start-up (set before the process group)."""
    os.environ.setdefault("NCCL_DEBUG", "INFO")
    os.environ.setdefault("NCCL_DEBUG_FILE", os.path.join(run_dir, "nccl-%h-%p.log"))
    os.environ.setdefault("TORCH_DISTRIBUTED_DEBUG", "DETAIL")


def setup(cfg: DistConfig, device_name: str) -> Runtime:
    """Detect the launcher, pick the device, and join the process group when there are peers."""
    place = launchers.detect(cfg.init)
    if place.launcher == "mpi":
        place = rendezvous.mpi_rendezvous(place)
    elif place.launcher == "slurm" and place.world_size > 1:
        rendezvous.slurm_rendezvous()
    device = devices.select_device(device_name, place.local_rank, place.local_world_size)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "xpu":
        torch.xpu.set_device(device)
    threads, threads_why = cpus.set_cpu_threads(place.local_world_size)
    backend = None
    if place.world_size > 1:
        backend = devices.backend_for(cfg.backend, device)
        if backend == "nccl":  # PyTorch's flight recorder: what each rank's NCCL was doing when a collective hung
            os.environ.setdefault("TORCH_NCCL_TRACE_BUFFER_SIZE", "2000")
            os.environ.setdefault("TORCH_NCCL_DUMP_ON_TIMEOUT", "1")
        init_timeout = datetime.timedelta(seconds=cfg.init_timeout)  # joining: short; collectives: cfg.timeout
        store = rendezvous.restart_store(place, init_timeout) or rendezvous.open_store(place, init_timeout)
        tdist.init_process_group(backend=backend, store=store, rank=place.rank, world_size=place.world_size,
                                 timeout=datetime.timedelta(seconds=cfg.timeout))
    hosts, pids = zip(*all_gather_object((socket.gethostname(), os.getpid())), strict=True)
    return Runtime(place.rank, place.local_rank, place.world_size, place.local_world_size, place.launcher,
                   device, backend, threads, hosts, threads_why, pids)


def end_job(launcher: str, code: int) -> None:
    """End this process so that every rank of the job ends, a frozen one included. Under an MPI launcher with
    MPI_Abort (MPICH's and PALS's mpiexec kill every process of the job: a plain non-zero exit left a frozen rank
    on another host running on the PBS lab); in an srun step by SIGKILL to the step's tasks (Slurm waits for every
    task by default, and srun --kill-on-bad-exit would first wake a frozen one with SIGCONT and SIGTERM, and also
    cut short the exit of ranks that stopped cleanly); under torchrun its agent ends the rest."""
    labels.finish()  # what this rank printed last (the reporter's line) reaches the job log first
    job, step = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_STEP_ID")
    if launcher == "slurm" and job and step and shutil.which("scancel"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["scancel", "--signal=KILL", f"{job}.{step}"], capture_output=True, timeout=10)
    if launcher == "mpi":
        try:
            from mpi4py import MPI

            MPI.COMM_WORLD.Abort(code)
        except Exception:  # no mpi4py after all: the exit below
            pass
    os._exit(code)


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
    rank = tdist.get_rank() if tdist.is_initialized() else launchers.guess_rank()
    if rank == 0 or not error.on_all_ranks:
        prefix = "hpc_mnist: error: " if rank == 0 else f"hpc_mnist: error (rank {rank}): "
        print(prefix + str(error), file=sys.stderr, flush=True)
