"""What a rank computes on: its device, the collective library that device talks through, and waiting for it."""

from __future__ import annotations

import torch

from hpc_mnist.errors import UserError


def select_device(name: str, local_rank: int, local_world_size: int | None = None) -> torch.device:
    """auto: cuda, xpu, mps, then cpu."""
    available = {
        "cuda": torch.cuda.is_available(),
        "xpu": hasattr(torch, "xpu") and torch.xpu.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if name == "auto":
        name = next(kind for kind, ok in available.items() if ok)
    elif not available[name]:
        raise UserError(f"train.device={name} but no {name} device is available here; use train.device=auto")
    if name in ("cuda", "xpu"):
        return torch.device(name, device_index(local_rank, getattr(torch, name).device_count(), local_world_size))
    return torch.device(name)


def device_index(local_rank: int, visible: int, local_world_size: int | None = None) -> int:
    """GPU index for a rank: 0 when it sees one GPU (CUDA_VISIBLE_DEVICES or --gpus-per-task set per
    rank); else its local rank among the node's GPUs, spread evenly when the node runs fewer ranks than it
    has GPUs (6 ranks on Aurora's 12 tiles take tiles 0, 2, ... 10, on both sockets, as their CPU binding
    does, instead of tiles 0-5 on socket 0)."""
    if visible == 1:
        return 0
    if local_world_size and local_world_size < visible:
        return local_rank * (visible // local_world_size)
    return local_rank % visible


def backend_for(name: str, device: torch.device) -> str:
    """The process-group backend: `name` unless auto, which takes the device's own library (nccl on CUDA, xccl
    on XPU), else gloo."""
    if name != "auto":
        return name
    return {"cuda": "nccl", "xpu": "xccl"}.get(device.type, "gloo")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on `device` (a GPU runs ahead of the host), before reading a clock or an event."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
