"""The tutorial models and a configurable CNN. Each returns logits: CrossEntropyLoss applies log-softmax itself.

(The CNN tutorial applied softmax before CrossEntropyLoss; that double softmax caps the loss near 1.46
and slows learning. It is available only behind model.softmax_before_loss, to reproduce the lesson; the
fastai from-scratch lesson's own loss likewise only behind model.loss=sigmoid_one_vs_rest.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hpc_mnist.core.config import ModelConfig, conv_output_size, conv_padding

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


class BlockConv(nn.Module):
    """A k x k stride-2 convolution of a one-channel image (k even, padding k/2 - 1), computed as a k/2 x k/2
    convolution of the image's 2x2 pixel blocks (pixel_unshuffle: 4 channels at half the size).

    The same function (weight [o, 0, 2p+r, 2q+s] is this one's [o, 2r+s, p, q]) at a third of the time on a
    CPU: oneDNN's kernels for a single input channel run a 4x4 stride-2 convolution's forward and weight
    gradient at ~3 GFLOP/s (8.8 ms per step of 256 on this project's AVX2 CPU, against 3.1 ms this way).
    PyTorch's default initialisation is the k x k convolution's (fan-in k^2 either way); model.init=glorot's
    fan-out is not (out x (k/2)^2 here)."""

    def __init__(self, out: int, kernel: int, bias: bool):
        super().__init__()
        self.pad = kernel // 2 - 1
        self.conv = nn.Conv2d(4, out, kernel // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = F.pixel_unshuffle(F.pad(x, [self.pad] * 4), 2)
        if self.conv.weight.is_contiguous(memory_format=torch.channels_last):  # the model's memory format
            blocks = blocks.contiguous(memory_format=torch.channels_last)
        return self.conv(blocks)


class CNN(nn.Module):
    """Convolutions, each followed by [max-pool], [batch norm] and ReLU; dropout; [dense, ReLU, dropout]; logits.

    The defaults are the CNN tutorial's MNISTClassifier (conv32-conv64-pool-dropout-fc128-dropout). Pooling
    comes before the ReLU (the same result as after it, on a quarter of the values) and before batch norm
    (statistics of the pooled map: cheaper, and what the smaller network trains with).
    """

    def __init__(self, channels: list[int] = (32, 64), kernels: list[int] = (3, 3), pools: list[int] = (1, 2),
                 padding: str = "valid", batch_norm: bool = False, fc: int = 128, conv_dropout: float = 0.25,
                 fc_dropout: float = 0.5, strides: list[int] = ()):
        super().__init__()
        layers: list[nn.Module] = []
        width, size = 1, 28
        for out, kernel, pool, stride in zip(channels, kernels, pools, strides or [1] * len(pools), strict=True):
            if width == 1 and stride == 2 and kernel % 2 == 0 and padding == "same":
                layers.append(BlockConv(out, kernel, bias=not batch_norm))
            else:
                layers.append(nn.Conv2d(width, out, kernel, stride, conv_padding(kernel, stride, padding),
                                        bias=not batch_norm))  # batch norm's shift makes a bias redundant
            size = conv_output_size(size, kernel, stride, padding)
            if pool > 1:
                layers.append(nn.MaxPool2d(pool))
                size //= pool
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            width = out
        if conv_dropout > 0:
            layers.append(nn.Dropout(conv_dropout))
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        width *= size * size
        if fc:
            head += [nn.Linear(width, fc), nn.ReLU()] + ([nn.Dropout(fc_dropout)] if fc_dropout > 0 else [])
            width = fc
        head.append(nn.Linear(width, 10))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SoftmaxOutput(nn.Module):
    """Probabilities instead of logits, so CrossEntropyLoss applies a second softmax: the CNN tutorial's
    bug, kept only so that its published figure can be reproduced (model.softmax_before_loss=true)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)


def build(cfg: ModelConfig) -> nn.Module:
    if cfg.name == "linear":
        model = linear()
    elif cfg.name == "mlp":
        model = mlp(cfg.hidden, cfg.activation, cfg.dropout)
    else:
        model = CNN(cfg.channels, cfg.kernels, cfg.pools, cfg.padding, cfg.batch_norm, cfg.fc, cfg.conv_dropout,
                    cfg.fc_dropout, cfg.strides)
    if cfg.init == "normal":  # every weight and bias drawn from N(0, 1), as the from-scratch lesson does
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 1.0)
    elif cfg.init == "glorot":  # Keras's default: Glorot-uniform weights, zero biases
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
                else:
                    p.zero_()
    return SoftmaxOutput(model) if cfg.softmax_before_loss else model


def sigmoid_one_vs_rest(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The fastai from-scratch lesson's loss: each output's sigmoid is pushed towards 1 for the true class and
    towards 0 for the others, by its distance (not its log), averaged over the 10 outputs of each sample."""
    p = torch.sigmoid(logits.float())
    truth = F.one_hot(targets, logits.shape[1]).bool()
    per_sample = torch.where(truth, 1 - p, p).mean(dim=1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def loss_function(cfg: ModelConfig) -> Callable[..., torch.Tensor]:
    """(logits, targets, reduction="mean"|"sum") -> loss: cross-entropy unless a lesson asks for its own."""
    if cfg.loss == "sigmoid_one_vs_rest":
        return sigmoid_one_vs_rest
    if cfg.label_smoothing:
        return functools.partial(F.cross_entropy, label_smoothing=cfg.label_smoothing)
    return F.cross_entropy


def uses_channels_last(cfg: ModelConfig) -> bool:
    return cfg.name == "cnn" and cfg.channels_last


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def allreduce_bytes(model: nn.Module) -> int:
    """Bytes DDP all-reduces per step: every parameter's fp32 gradient."""
    return 4 * parameter_count(model)


def flops_per_sample(model: nn.Module) -> int:
    """Multiply-adds x 2 of one forward pass on a 28x28 digit (convolutions and dense layers), times 3
    for forward and backward: the usual estimate of training cost per sample."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += output[0].numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was_training = model.training
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, 28, 28, device=next(model.parameters()).device))
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return 2 * 3 * total
