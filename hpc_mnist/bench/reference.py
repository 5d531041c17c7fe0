"""The reference side of the comparison: the tutorials' training loop, written once.

With the project's model, optimizer and batch (`TutorialLoop.with_config`) it is what our loop's speed is
measured against; with pytorch/examples' settings (`TutorialLoop.pytorch_examples`) it is the recipe most users
would pick, the time-to-99% protocol's reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hpc_mnist.core import config, models, optim
from hpc_mnist.core.config import Config
from hpc_mnist.core.datasets import torchvision_module


class TutorialLoop:
    """torchvision MNIST through a per-sample transform in a shuffling DataLoader, fp32, no channels_last, and
    the plain step: forward, cross-entropy, backward, optimizer step (and a scheduler step after each epoch)."""

    def __init__(self, root: str, transform: Callable, batch: int, test_batch: int, model: nn.Module,
                 optimizer: torch.optim.Optimizer, device: torch.device,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None):
        from torch.utils.data import DataLoader

        datasets = torchvision_module().datasets  # one line, not a traceback, when torchvision does not fit torch
        self.train_loader = DataLoader(datasets.MNIST(root, train=True, download=False, transform=transform),
                                       batch_size=batch, shuffle=True)
        self.test_loader = DataLoader(datasets.MNIST(root, train=False, download=False, transform=transform),
                                      batch_size=test_batch)
        self.model, self.optimizer, self.scheduler, self.device = model, optimizer, scheduler, device

    @classmethod
    def with_config(cls, cfg: Config, device: torch.device) -> TutorialLoop:
        """The tutorials' loop (ToTensor alone) with the model, optimizer and batch of `cfg`."""
        torch.manual_seed(cfg.train.seed)
        model = models.build(cfg.model).to(device)
        to_input = torchvision_module().transforms.ToTensor()
        return cls(str(cfg.data.root), to_input, cfg.train.batch_size, cfg.train.batch_size, model,
                   optim.build_optimizer(cfg.optim, model, cfg.optim.lr), device)

    @classmethod
    def pytorch_examples(cls, root: str | Path, seed: int, device: torch.device) -> TutorialLoop:
        """pytorch/examples' mnist recipe: the tutorial CNN, Adadelta lr 1.0 with the learning rate x 0.7 after
        each epoch, batch 64 (1000 to test), ToTensor + Normalize (the script most users would pick)."""
        transforms = torchvision_module().transforms
        to_input = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        torch.manual_seed(seed)
        model = models.build(config.ModelConfig(name="cnn", channels_last=False)).to(device)
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        return cls(str(root), to_input, 64, 1000, model, optimizer, device,
                   torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7))

    def _step(self, X: torch.Tensor, y: torch.Tensor) -> None:
        X, y = X.to(self.device), y.to(self.device)
        loss = F.cross_entropy(self.model(X), y)  # the examples' log_softmax then nll_loss, in one call
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from self.train_loader

    def steps(self, n: int) -> Callable[[], None]:
        """`n` training steps as one call, to time."""
        it = self._batches()

        def train_n_steps() -> None:
            self.model.train()
            for _ in range(n):
                self._step(*next(it))
        return train_n_steps

    def epoch(self, epoch: int) -> None:
        self.model.train()
        for X, y in self.train_loader:
            self._step(X, y)
        if self.scheduler is not None:
            self.scheduler.step()

    @torch.no_grad()
    def test_accuracy(self) -> float:
        self.model.eval()
        correct = 0
        for X, y in self.test_loader:
            correct += (self.model(X.to(self.device)).argmax(1) == y.to(self.device)).sum().item()
        return correct / len(self.test_loader.dataset)
