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
def test_auto_precision_on_a_gpu_is_bf16_where_it_has_bf16(device):
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    for model in ("linear", "mlp", "cnn"):
        assert precision.resolve("auto", torch.device("cuda", 0), model) == expected
