"""A GPU's peak dense bf16 tensor throughput, found from its name, and the FLOP-bound limit of a training step on
it: the samples/s no implementation of the step can pass, whatever its kernels."""

from __future__ import annotations

# Dense (no structured sparsity) BF16 tensor-core TFLOP/s at boost clock, from the vendors' datasheets (NVIDIA
# quotes sparse figures: halved here). The first name contained in the device's name wins, so the more specific
# names come first: "NVIDIA H100 80GB HBM3" is the SXM5 part, "NVIDIA H100 PCIe" and "NVIDIA H100 NVL" are not.
PEAK_BF16_TFLOPS = (
    ("H100 NVL", 835.5),
    ("H100 PCIe", 756.5),
    ("H100", 989.4),  # SXM5
    ("H200 NVL", 835.5),
    ("H200", 989.4),  # SXM (and GH200): the H100 SXM5's tensor cores with more memory
    ("H800", 989.4),
    ("A100", 312.0),  # SXM4 and PCIe alike
    ("MI300X", 1307.4),
    ("MI250X", 383.0),  # per package (two GCDs: one rank sees half)
)


def peak_bf16_tflops(device_name: str) -> float | None:
    """The datasheet figure for a device name as torch.cuda.get_device_name gives it; None when unknown."""
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key.lower() in device_name.lower()), None)


def flop_bound_samples_per_s(flop_per_sample: float, tflops: float) -> float:
    """Samples/s at which a step of `flop_per_sample` (forward and backward) would keep the device at its peak."""
    return tflops * 1e12 / flop_per_sample
