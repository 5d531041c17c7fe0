"""Our side of the comparison: the project's Trainer, driven so many steps or one epoch at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from hpc_mnist.core.config import Config
from hpc_mnist.runtime import dist
from hpc_mnist.training.trainer import Trainer


class ProjectLoop:
    """The trainer's loop, one Trainer per (model, precision, batch): resident uint8 data, the chosen precision,
    channels_last."""

    def __init__(self, cfg: Config, rt: dist.Runtime, scratch: Path):
        self.trainer = Trainer(cfg, rt, scratch)
        self.cfg, self.device = cfg, rt.device
        self._epoch = 0

    def _batches(self) -> Iterator[torch.Tensor]:
        while True:
            self._epoch += 1
            yield from self.trainer.order(self._epoch)

    def steps(self, n: int) -> Callable[[], None]:
        """`n` training steps as one call, to time."""
        it = self._batches()

        def train_n_steps() -> None:
            self.trainer.train_on([next(it) for _ in range(n)])
        return train_n_steps

    def epoch(self, epoch: int) -> None:
        self.trainer.train_on(self.trainer.order(epoch))

    def test_accuracy(self) -> float:
        trainer = self.trainer
        return trainer.evaluate(trainer.data.test)[1]
