"""Per-rank step timing: where each rank's time goes, and which rank holds the others up.

Each step is split into data (the batch gather), forward, backward compute, waiting on peers, and the
optimizer. With DDP the gradient all-reduce overlaps the backward pass, so the split comes from a
communication hook: the moment this rank's last gradient bucket is ready ends its own backward work;
the rest of the backward pass is spent waiting for the other ranks' gradients. A rank's own work (data +
forward + backward compute + optimizer) excludes that wait, so a slow rank stands out even though every
rank's step takes equally long. On CUDA the marks are events, read once per epoch (no synchronisation
in the hot path); on CPU they are clock readings.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.distributed as tdist

from hpc_mnist.runtime import devices

PHASES = ("data", "forward", "backward", "wait", "optimizer")
OWN = ("data", "forward", "backward", "optimizer")  # the rank's own work: everything but waiting on peers
MIN_GAP_S = 0.05  # per epoch: below this, a difference between ranks is clock noise, not a straggler


class StepTimer:
    """Marks taken at phase boundaries; `phase_seconds` sums them per phase over an epoch."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.enabled = enabled
        self.device = device
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []  # (phase that ends here, clock or event)
        self.grads_ready: Any = None  # set by the communication hook when a bucket is ready

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        if self.enabled:
            self.marks.append(("start", self._now()))

    def mark(self, phase: str) -> None:
        if not self.enabled:
            return
        if phase == "wait" and self.grads_ready is not None:  # backward compute ended when the last bucket was ready
            self.marks.append(("backward", self.grads_ready))
            self.grads_ready = None
        elif phase == "wait":
            self.marks.append(("backward", self._now()))  # one process: no peers to wait for
        self.marks.append((phase, self._now()))

    def bucket_ready(self) -> None:
        if self.enabled:
            self.grads_ready = self._now()

    def phase_seconds(self) -> dict[str, float]:
        """Seconds per phase since the last call, summed over steps."""
        totals = dict.fromkeys(PHASES, 0.0)
        if self.marks:
            devices.synchronize(self.device)
        previous = None
        for phase, mark in self.marks:
            if previous is not None and phase != "start":
                totals[phase] += (previous.elapsed_time(mark) / 1000 if self.cuda else mark - previous)
            previous = mark
        self.marks.clear()
        return totals


def timed_allreduce_hook(timer: StepTimer, watchdog=None):
    """DDP's own averaging all-reduce, with a mark when each bucket's gradients are ready (and the hang
    watchdog told that this rank now waits on its peers)."""

    def hook(group, bucket):  # unannotated: DDP checks annotations, which postponed evaluation turns into strings
        timer.bucket_ready()
        if watchdog is not None:
            watchdog.in_collective()
        tensor = bucket.buffer()
        tensor.div_(tdist.get_world_size(group))
        return tdist.all_reduce(tensor, group=group, async_op=True).get_future().then(lambda fut: fut.value()[0])

    return hook


def summarize(per_rank: list[dict[str, float]], hosts: list[str], margin: float) -> dict[str, Any]:
    """Across ranks: min/median/max own work, the slowest rank and its host, and the stragglers: ranks whose
    own work exceeds the median of the other ranks' by more than `margin` (a fraction)."""
    own = [sum(times[p] for p in OWN) for times in per_rank]
    slowest = max(range(len(own)), key=own.__getitem__)
    stragglers = []
    if len(own) > 1:
        for rank, seconds in enumerate(own):
            others = statistics.median(own[:rank] + own[rank + 1:])
            if seconds > others * (1 + margin) and seconds - others > MIN_GAP_S:
                stragglers.append({"rank": rank, "host": hosts[rank], "own_s": seconds,
                                   "others_median_s": others})
    row: dict[str, Any] = {
        "own_s_min": min(own), "own_s_median": statistics.median(own), "own_s_max": own[slowest],
        "slowest_rank": slowest, "slowest_host": hosts[slowest], "stragglers": stragglers,
    }
    for phase in PHASES:
        row[f"{phase}_s_median"] = statistics.median(times[phase] for times in per_rank)
    row["wait_s_max"] = max(times["wait"] for times in per_rank)
    return row
