"""The three tutorial models. Each returns logits: CrossEntropyLoss applies log-softmax itself.

(The CNN tutorial applied softmax before CrossEntropyLoss; that double softmax caps the loss near 1.46
and slows learning, so none is applied here.)
"""

from __future__ import annotations

import torch
from torch import nn

from hpc_mnist.config import ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


def linear() -> nn.Module:
    """The tutorial's LinearClassifier: 784 -> 10."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def mlp(hidden: list[int], activation: str = "relu", dropout: float = 0.2) -> nn.Module:
    """The tutorial's NonlinearClassifier (784-50-50-50-10, dropout after the first layer)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for i, size in enumerate(hidden):
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        if i == 0 and dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


class CNN(nn.Module):
    """The CNN tutorial's MNISTClassifier, returning logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(),
            nn.Conv2d(32, 64, 3), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(cfg: ModelConfig) -> nn.Module:
    if cfg.name == "linear":
        return linear()
    if cfg.name == "mlp":
        return mlp(cfg.hidden, cfg.activation, cfg.dropout)
    return CNN()


def uses_channels_last(cfg: ModelConfig) -> bool:
    return cfg.name == "cnn" and cfg.channels_last


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
