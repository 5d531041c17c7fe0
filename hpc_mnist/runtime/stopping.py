"""When all ranks stop: one small all-reduce every CHECK_EVERY steps, and at an epoch's last step.

A stop request (a signal, see signals.py) may reach one rank only, the deadline passes at slightly different
moments on different hosts, and a non-finite loss may show on one rank first: the ranks agree on all three at
the same steps, so they stop at the same step and write one checkpoint together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hpc_mnist.runtime import dist
from hpc_mnist.runtime.deadline import Deadline
from hpc_mnist.runtime.hang import Watchdog
from hpc_mnist.runtime.signals import StopRequest

CHECK_EVERY = 16  # steps between the one small all-reduce that agrees on stops and non-finite losses


@dataclass
class Verdict:
    """What the ranks agreed at a check: the first step with a non-finite loss (0: none), and why to stop."""

    bad_step: int
    reason: str | None  # "signal" | "deadline" | None


class StopAgreement:
    def __init__(self, stop: StopRequest | None = None, deadline: Deadline | None = None):
        self.stop, self.deadline = stop, deadline

    def at(self, step: int, last_step: int, first_bad: torch.Tensor, watchdog: Watchdog) -> Verdict | None:
        """None between checks (no collective); at a check, what the ranks agreed."""
        if step % CHECK_EVERY and step != last_step:
            return None
        watchdog.in_collective()
        signum = (self.stop.signum or 0) if self.stop else 0
        late = int(self.deadline.reached()) if self.deadline else 0
        flags = torch.stack([first_bad, torch.tensor(signum, device=first_bad.device),
                             torch.tensor(late, device=first_bad.device)])
        bad, agreed_signal, agreed_deadline = dist.any_rank(flags).tolist()
        if agreed_signal and self.stop:
            self.stop.agreed = agreed_signal
            return Verdict(bad, "signal")
        return Verdict(bad, "deadline" if agreed_deadline else None)
