"""Where the launcher put this process: rank numbers as torchrun, an MPI launcher or an srun step export them.

Nothing here talks to another rank; `rendezvous.py` finds rank 0 and `dist.py` joins the process group.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from hpc_mnist.errors import UserError


@dataclass(frozen=True)
class Placement:
    """Rank numbers as a launcher reported them, before any process group exists."""

    launcher: str  # torchrun | mpi | slurm | none
    rank: int = 0
    local_rank: int | None = 0  # None: the launcher did not say (MPI asks mpi4py)
    world_size: int = 1
    local_world_size: int | None = 1


def env_int(*names: str) -> int | None:
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
    world = env_int("WORLD_SIZE")
    return Placement("torchrun", env_int("RANK"), env_int("LOCAL_RANK") or 0, world,
                     env_int("LOCAL_WORLD_SIZE") or world)


def _mpi_env() -> Placement | None:
    """Ranks as Open MPI, PMIx, Cray PALS or PMI (MPICH Hydra, Intel MPI) export them."""
    rank = env_int("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PALS_RANKID", "PMI_RANK")
    if rank is None:
        return None
    return Placement(
        "mpi", rank,
        env_int("OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_LOCAL_RANK", "PALS_LOCAL_RANKID", "PMI_LOCAL_RANK",
                "MPI_LOCALRANKID"),
        env_int("OMPI_COMM_WORLD_SIZE", "PMI_SIZE") or 0,  # 0: unknown until mpi4py says
        env_int("OMPI_COMM_WORLD_LOCAL_SIZE", "PALS_LOCAL_SIZE", "PMI_LOCAL_SIZE", "MPI_LOCALNRANKS"),
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
    world = env_int("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or 1
    nodes = env_int("SLURM_STEP_NUM_NODES", "SLURM_NNODES") or 1
    local_size = max(1, world // nodes)
    layout = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE")
    node = env_int("SLURM_NODEID")
    if layout and node is not None:
        counts = tasks_per_node(layout)
        if 0 <= node < len(counts):
            local_size = counts[node]
    return Placement("slurm", env_int("SLURM_PROCID"), env_int("SLURM_LOCALID") or 0, world, local_size)


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
    check_placement(place)
    return place


def check_placement(place: Placement) -> None:
    """Ranks within the world, local ranks within the node: else the launcher's variables contradict each other."""
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
