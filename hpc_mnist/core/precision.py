"""Mixed precision: which dtype to compute in, the autocast context, and the fp16 GradScaler."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True where oneDNN has bf16 kernels (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True on GPUs with bf16 tensor cores (NVIDIA compute capability 8.0 on: A100, H100; and AMD's). Not
    torch.cuda.is_bf16_supported(), which also says True where bf16 is only emulated (a V100): there fp16 is the
    fast half precision."""
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8


def resolve(requested: str, device: torch.device, model_name: str) -> str:
    """The precision `auto` stands for: the fastest choice that trains as well as fp32.

    On CPUs only convolutions gain from bf16; the linear and MLP models are too small for the casts
    to pay, so they stay fp32.
    """
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    if device.type == "xpu":
        return "bf16"
    if device.type == "cpu" and model_name == "cnn" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def autocast(precision: str, device: torch.device, cache: bool = True) -> contextlib.AbstractContextManager:
    """`cache=False` for a region captured as a CUDA graph (PyTorch's CUDA-graph notes ask for it): the weights'
    low-precision copies are then cast inside the graph on every replay, never taken from autocast's cache."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision], cache_enabled=cache)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 only (bf16 has fp32's exponent range); disabled, it is a pass-through."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
