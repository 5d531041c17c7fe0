"""When all ranks stop: one small all-reduce every CHECK_EVERY steps, and at an epoch's last step.

A stop request (a signal, see signals.py) may reach one rank only, the deadline passes at slightly different
moments on different hosts, and a non-finite loss may show on one rank first: the ranks agree on all three at
the same steps, so they stop at the same step and write one checkpoint together. A timed checkpoint
(train.checkpoint_minutes) is agreed the same way, since every rank takes part in writing it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from hpc_mnist.runtime import dist
from hpc_mnist.runtime.deadline import Deadline
from hpc_mnist.runtime.hang import Watchdog
from hpc_mnist.runtime.signals import StopRequest

CHECK_EVERY = 16  # steps between the one small all-reduce that agrees on stops and non-finite losses
MAX_RANKS = 1 << 20  # a non-finite loss travels as one integer: the earliest step, then the lowest rank


def bad_key(step: int, rank: int) -> int:
    """A rank's first non-finite step as a number whose maximum over ranks is the earliest step, and on it the
    lowest rank (0: none), so that the one MAX all-reduce names where the loss first broke."""
    return ((1 << 40) - step) * MAX_RANKS + (MAX_RANKS - 1 - rank) if step else 0


def _bad_from_key(key: int) -> tuple[int, int]:
    """(step, rank) from bad_key's number; (0, -1) when no rank saw a non-finite loss."""
    return ((1 << 40) - key // MAX_RANKS, MAX_RANKS - 1 - key % MAX_RANKS) if key else (0, -1)


@dataclass
class Verdict:
    """What the ranks agreed at a check: the first step with a non-finite loss (0: none) and the rank that saw
    it, and why to stop."""

    bad_step: int
    reason: str | None  # "signal" | "deadline" | None
    checkpoint: bool = False  # train.checkpoint_minutes have passed since the last checkpoint
    bad_rank: int = -1


class StopAgreement:
    def __init__(self, stop: StopRequest | None = None, deadline: Deadline | None = None,
                 checkpoint_minutes: float = 0.0):
        self.stop, self.deadline = stop, deadline
        self.checkpoint_s = checkpoint_minutes * 60
        self.last_checkpoint = time.monotonic()

    def saved(self) -> None:
        """A checkpoint was written: the next timed one is due checkpoint_minutes from now."""
        self.last_checkpoint = time.monotonic()

    def before_start(self, device: torch.device) -> str | None:
        """The signal the ranks agree came during start-up, if any (one small all-reduce, before a new run's
        directory is made): a Ctrl-C there ends the run at once, with nothing trained and nothing left behind."""
        signum = (self.stop.signum or 0) if self.stop else 0
        agreed = int(dist.any_rank(torch.tensor([signum], dtype=torch.long, device=device))[0])
        if agreed and self.stop:
            self.stop.agreed = agreed
        return self.stop.name() if agreed and self.stop else None

    def at(self, step: int, last_step: int, first_bad: torch.Tensor, watchdog: Watchdog) -> Verdict | None:
        """None between checks (no collective); at a check, what the ranks agreed."""
        if step % CHECK_EVERY and step != last_step:
            return None
        watchdog.in_collective()
        signum = (self.stop.signum or 0) if self.stop else 0
        late = int(self.deadline.reached()) if self.deadline else 0
        due = int(bool(self.checkpoint_s) and time.monotonic() - self.last_checkpoint >= self.checkpoint_s)
        mine = bad_key(int(first_bad), dist.rank_and_size()[0])  # a .item() only at checks
        flags = torch.tensor([mine, signum, late, due], dtype=torch.long, device=first_bad.device)
        key, agreed_signal, agreed_deadline, agreed_due = dist.any_rank(flags).tolist()
        bad, rank = _bad_from_key(key)
        if agreed_signal and self.stop:
            self.stop.agreed = agreed_signal
            return Verdict(bad, "signal", bad_rank=rank)
        return Verdict(bad, "deadline" if agreed_deadline else None, bool(agreed_due), rank)
