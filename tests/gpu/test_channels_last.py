"""channels_last on the device: the CNN's weights, its batches and its gradients are in NHWC, and the model
computes the same function as in the default layout."""

import pytest
import torch

from helpers.devices import DEVICES, trainer

CNN = ["model.name=cnn", "model.channels=[8,16]", "model.fc=32", "train.precision=fp32", "model.conv_dropout=0",
       "model.fc_dropout=0"]


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_weights_batches_and_gradients_compute_the_same_function(device, tmp_path):
    nhwc = trainer(device, tmp_path, *CNN, "model.channels_last=true")
    nchw = trainer(device, tmp_path, *CNN, "model.channels_last=false")
    assert nhwc.channels_last and not nchw.channels_last
    positions = nhwc.order(1)[0]
    x, y = nhwc.batch(nhwc.data.train, positions)
    assert x.is_contiguous(memory_format=torch.channels_last)
    conv = nhwc.model.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    nhwc.step(x, y)
    assert conv.grad.is_contiguous(memory_format=torch.channels_last)
    nchw.step(*nchw.batch(nchw.data.train, positions))  # same seed: same initial weights and batch
    tolerance = {"cpu": 1e-5, "cuda": 1e-3}[device]  # cuDNN picks other kernels per layout (TF32 included)
    for a, b in zip(nhwc.model.parameters(), nchw.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
