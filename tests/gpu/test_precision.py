"""Mixed precision on the device: bf16 and fp16 autocast compute in half precision and keep fp32 weights and
gradients; only fp16 gets a GradScaler, which scales the loss and skips the update of an overflowed step."""

import pytest
import torch

from helpers.devices import DEVICES, ON_CUDA, trainer
from hpc_mnist.core import precision

SMALL_CNN = ["model.name=cnn", "model.channels=[4,8]", "model.fc=16"]  # the tutorial CNN's layers, narrower


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("device", DEVICES)
def test_autocast_computes_in_half_precision_and_keeps_fp32_weights(device, amp, tmp_path):
    t = trainer(device, tmp_path, *SMALL_CNN, f"train.precision={amp}")
    assert t.amp == amp
    x, y = t.batch(t.data.train, t.order(1)[0])
    before = [p.detach().clone() for p in t.model.parameters()]
    loss, logits = t.step(x, y)
    assert logits.dtype == precision.DTYPES[amp]  # the forward ran in half precision
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in t.model.parameters())
    assert t.scaler.is_enabled() == (amp == "fp16")
    if amp == "fp16":
        assert t.scaler.get_scale() == 2.0**16  # the first step did not overflow: scale unchanged
    assert any(not torch.equal(b, p) for b, p in zip(before, t.model.parameters(), strict=True))


@pytest.mark.parametrize("device", DEVICES)
def test_an_overflowed_fp16_step_is_skipped_and_the_scale_halved(device, tmp_path):
    t = trainer(device, tmp_path, "model.name=mlp", "train.precision=fp16")
    x, y = t.batch(t.data.train, t.order(1)[0])
    before = [p.detach().clone() for p in t.model.parameters()]
    t.step(x * 1e30, y)  # inf activations: inf gradients
    assert all(torch.equal(b, p) for b, p in zip(before, t.model.parameters(), strict=True))
    assert t.scaler.get_scale() == 2.0**15


@pytest.mark.parametrize("device", ON_CUDA)
def test_auto_precision_on_a_gpu_is_bf16_where_it_has_bf16_tensor_cores(device):
    expected = "bf16" if torch.cuda.get_device_capability(0)[0] >= 8 or torch.version.hip else "fp16"
    for model in ("linear", "mlp", "cnn"):
        assert precision.resolve("auto", torch.device("cuda", 0), model) == expected


@pytest.mark.parametrize("major, expected", [(7, "fp16"), (8, "bf16"), (9, "bf16")])
def test_auto_precision_takes_fp16_where_bf16_would_only_be_emulated(monkeypatch, major, expected):
    """A V100 (7.0) can hold bf16 tensors, and torch.cuda.is_bf16_supported() says True there, but it has no bf16
    tensor cores: auto must take fp16 (an A100 is 8.0, an H100 9.0)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.version, "hip", None)
    assert precision.resolve("auto", torch.device("cuda", 0), "cnn") == expected
