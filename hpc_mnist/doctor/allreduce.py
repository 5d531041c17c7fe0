"""One all-reduce across the ranks: its sum checked, its time as nccl-tests reports it, and the network NCCL
chose for it (read from NCCL's own INFO log)."""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from hpc_mnist.runtime.devices import synchronize

ALLREDUCE_BYTES = 4 * 2**20


def timed_allreduce(device: torch.device, world: int, rank: int) -> dict[str, Any]:
    """One correctness all-reduce, then a timed one of ALLREDUCE_BYTES (nccl-tests' bus bandwidth)."""
    x = torch.full((ALLREDUCE_BYTES // 4,), float(rank + 1), device=device)
    tdist.all_reduce(x)
    got, expected = float(x[0]), world * (world + 1) / 2
    times = []
    for _ in range(4):
        synchronize(device)
        start = time.perf_counter()
        tdist.all_reduce(x)
        synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = min(times[1:])
    return {"correct": got == expected, "got": got, "expected": expected, "bytes": ALLREDUCE_BYTES,
            "seconds": seconds}


def nccl_network(log_text: str) -> str | None:
    """The network NCCL chose, from its INFO log ('Using network Socket', 'Using network AWS Libfabric')."""
    found = re.findall(r"Using network ([^\n]+)", log_text)
    return found[-1].strip() if found else None


def watch_nccl(backend: str) -> Path | None:
    """Point NCCL's INFO log at a private folder, to read which network it picked (unless the user set it)."""
    if backend != "nccl" or "NCCL_DEBUG" in os.environ:
        return None
    folder = Path(tempfile.mkdtemp(prefix="hpc_mnist-doctor-"))
    os.environ.update(NCCL_DEBUG="INFO", NCCL_DEBUG_SUBSYS="INIT,NET", NCCL_DEBUG_FILE=str(folder / "nccl.%p.log"))
    return folder


def read_nccl_network(folder: Path | None) -> str | None:
    """The network in the log `watch_nccl` pointed to; the folder is removed."""
    if folder is None:
        return None
    text = "".join(p.read_text(errors="replace") for p in folder.glob("*.log"))
    for p in folder.glob("*"):
        p.unlink()
    folder.rmdir()
    return nccl_network(text)
