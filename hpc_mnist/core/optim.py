"""Optimizer and learning-rate schedule. Every schedule steps once per optimizer step."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import lr_scheduler

from hpc_mnist.core.config import OptimConfig


def learning_rate(cfg: OptimConfig, world_size: int) -> float:
    """The base lr, times world size under the linear scaling rule (global batch grows with ranks)."""
    return cfg.lr * world_size if cfg.scale_lr else cfg.lr


def build_optimizer(cfg: OptimConfig, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def build_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer, lr: float,
                    steps_per_epoch: int, epochs: int) -> lr_scheduler.LRScheduler:
    total = steps_per_epoch * epochs
    if cfg.scheduler == "step":  # the tutorial's StepLR, counted in steps
        return lr_scheduler.StepLR(optimizer, step_size=cfg.step_size * steps_per_epoch, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.scheduler == "onecycle":
        return lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    return lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
