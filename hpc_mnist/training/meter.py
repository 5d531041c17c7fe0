"""An epoch's running figures on one rank, kept apart from the step so that the loop shows training only."""

from __future__ import annotations

import time

import torch


def sum_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


class EpochMeter:
    """This rank's sums of loss, correct predictions and samples (carried over a mid-epoch stop), the first step
    whose loss was not finite, the learning rate of each step since the last check (to name it if the loss
    broke there), and the samples per second for the progress line. Tensors stay on the device: the only
    host sync is at the ranks' checks."""

    def __init__(self, device: torch.device, partial: list[float] | None = None):
        self.sums = torch.tensor(partial or [0.0, 0.0, 0.0], dtype=sum_dtype(device), device=device)
        self.earlier = int(partial[2]) if partial else 0  # samples of this epoch before a stop
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)  # first step with a non-finite loss
        self.lrs: dict[int, float] = {}
        self.seen, self.started = 0, time.perf_counter()
        self.loss = torch.zeros((), device=device)

    def learning_rate(self, step: int, lr: float) -> None:
        self.lrs[step] = lr

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss = loss
        self.sums[0] += loss * len(y)
        self.sums[1] += (logits.argmax(dim=1) == y).sum()
        self.sums[2] += len(y)
        self.seen += len(y)
        self.first_bad = torch.where((self.first_bad == 0) & ~torch.isfinite(loss), step, self.first_bad)

    def checked(self) -> None:
        """The ranks agreed all was finite up to here: the learning rates before it are no longer needed."""
        self.lrs.clear()

    def rate(self) -> float:
        return self.seen / (time.perf_counter() - self.started)
