"""The CPU-thread policy: how many cores this process may use, and how many intra-op threads each rank takes.

Oversubscribed intra-op threads made a tiny MLP step about 100x slower on 2 shared cores, so a rank takes its
share of the node's cores unless someone chose (OMP_NUM_THREADS).
"""

from __future__ import annotations

import os
import time

import torch


def usable_cpus() -> list[int]:
    """The cores this process may run on: its CPU affinity where the OS keeps one (Linux), else every core
    (macOS has no sched_getaffinity)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def usable_cores() -> int:
    """How many cores this process may run on (see `usable_cpus`)."""
    return len(usable_cpus())


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
    """Split this node's cores among its ranks unless the user (or launcher) chose; (threads, why)."""
    chosen = chosen_threads()
    if chosen:
        return torch.get_num_threads(), f"OMP_NUM_THREADS={chosen}"
    bound = usable_cores()
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
