"""Everything about ranks lives here: launcher detection, process-group set-up, device and thread
choice, and the few collectives the trainer needs. Other modules ask `is_main()` or call these
helpers instead of testing rank numbers themselves.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as tdist

from hpc_mnist.config import DistConfig
from hpc_mnist.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Runtime:
    """Where this process sits in the job and what it computes on."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    launcher: str  # torchrun | none
    device: torch.device
    backend: str | None  # None for a single process
    threads: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // self.local_world_size)


@dataclass(frozen=True)
class Placement:
    """Rank numbers as a launcher reported them, before any process group exists."""

    launcher: str
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1


def _int_env(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer; check the launch line") from None


def detect(init: str = "auto") -> Placement:
    """Ranks from the launcher's environment; no communication happens here."""
    has_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if init == "none" or (init == "auto" and not has_torchrun):
        return Placement("none")
    if not has_torchrun:
        raise UserError("dist.init=torchrun but RANK/WORLD_SIZE are not set: start with torchrun, "
                        "or use dist.init=auto")
    world = _int_env("WORLD_SIZE")
    local_world = _int_env("LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in os.environ else world
    placement = Placement("torchrun", _int_env("RANK"), _int_env("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0,
                          world, local_world)
    if not (0 <= placement.rank < world and 0 <= placement.local_rank < local_world <= world):
        raise UserError(f"inconsistent torchrun variables RANK={placement.rank} LOCAL_RANK={placement.local_rank} "
                        f"WORLD_SIZE={world} LOCAL_WORLD_SIZE={local_world}")
    return placement


def guess_rank() -> int:
    """This process's rank before set-up, so errors found early are printed once."""
    try:
        return detect().rank
    except UserError:
        return 0


def select_device(name: str, local_rank: int) -> torch.device:
    """auto: cuda, xpu, mps, then cpu. A rank that sees exactly one GPU uses index 0."""
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
        count = getattr(torch, name).device_count()
        return torch.device(name, local_rank % count)
    return torch.device(name)


def set_cpu_threads(local_world_size: int) -> int:
    """Split this node's cores among its ranks unless the user (or launcher) chose.

    Oversubscribed intra-op threads made a tiny MLP step about 100x slower on 2 shared cores.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        bound = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        # A launcher that pinned us to a core subset has already divided the node.
        share = bound if bound < (os.cpu_count() or bound) else bound // local_world_size
        torch.set_num_threads(max(1, share))
    return torch.get_num_threads()


def _backend(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    return {"cuda": "nccl", "xpu": "xccl"}.get(device.type, "gloo")


def setup(cfg: DistConfig, device_name: str) -> Runtime:
    """Detect the launcher, pick the device, and join the process group when there are peers."""
    place = detect(cfg.init)
    device = select_device(device_name, place.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif device.type == "xpu":
        torch.xpu.set_device(device)
    threads = set_cpu_threads(place.local_world_size)
    backend = None
    if place.world_size > 1:
        backend = _backend(cfg.backend, device)
        tdist.init_process_group(backend=backend, init_method="env://", rank=place.rank,
                                 world_size=place.world_size,
                                 timeout=datetime.timedelta(seconds=cfg.timeout))
    return Runtime(place.rank, place.local_rank, place.world_size, place.local_world_size, place.launcher,
                   device, backend, threads)


def shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


def is_main() -> bool:
    return not tdist.is_initialized() or tdist.get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum in place across ranks (a no-op for one process)."""
    if tdist.is_initialized():
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


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
