"""The trainer in the test's own process (the quick tier's way to run it), beside a fake peer rank."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

from helpers.processes import LAUNCH_VARS, REPO
from hpc_mnist.runtime.stopping import bad_key


@dataclass
class Outcome:
    """What `python -m hpc_mnist.train` would have left: its exit code and what it printed."""

    code: int
    out: str
    err: str


def as_a_user_would(m: pytest.MonkeyPatch) -> None:
    """No launcher, scheduler or HPC_MNIST_* variables from this test's environment; the repository as cwd."""
    for key in list(os.environ):
        if key.startswith((*LAUNCH_VARS, "HPC_MNIST_")):
            m.delenv(key)
    m.chdir(REPO)


class PeerRank:
    """The other rank (rank 1) of a two-rank run, seen only through the agreement's all-reduce (MAX of the
    first non-finite step's key, the signal number, the deadline flag and the timed checkpoint's): from its
    `from_check`-th check on, it adds its own flags."""

    def __init__(self, from_check: int, bad_step: int = 0, signum: int = 0, late: int = 0, due: int = 0):
        self.from_check, self.checks = from_check, 0
        self.flags = torch.tensor([bad_key(bad_step, rank=1), signum, late, due])

    def __call__(self, flags: torch.Tensor) -> torch.Tensor:
        if flags.numel() == 1:  # the start-up agreement (a signal before the first step): this peer had none
            return flags
        self.checks += 1
        return torch.maximum(flags, self.flags) if self.checks >= self.from_check else flags
