"""Device choice on a GPU machine: `auto` takes the GPU, a rank takes its own GPU, the collective library follows
the device, and the trainer's step runs where its data lives."""

import pytest
import torch

from helpers.devices import DEVICES, ON_CUDA, trainer
from hpc_mnist.errors import UserError
from hpc_mnist.runtime import devices


@pytest.mark.parametrize("device", DEVICES)
def test_a_named_device_is_taken_with_its_collective_library(device):
    chosen = devices.select_device(device, local_rank=0)
    assert chosen.type == device
    assert chosen.index == (0 if device == "cuda" else None)
    assert devices.backend_for("auto", chosen) == {"cuda": "nccl", "cpu": "gloo"}[device]
    devices.synchronize(chosen)  # waits for the device's queue; a no-op on a CPU


@pytest.mark.parametrize("device", DEVICES)
def test_the_trainer_computes_where_its_device_is(device, tmp_path):
    t = trainer(device, tmp_path, "model.name=cnn", "train.precision=fp32")
    x, y = t.batch(t.data.train, t.order(1)[0])
    assert {p.device.type for p in t.model.parameters()} == {device}
    assert x.device.type == y.device.type == device and x.dtype == torch.float32
    loss, logits = t.step(x, y)
    assert loss.device.type == device and torch.isfinite(loss)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the error is for machines without one")
def test_cuda_asked_for_without_one_is_one_line():
    with pytest.raises(UserError, match="train.device=cuda but no cuda device is available here"):
        devices.select_device("cuda", local_rank=0)


@pytest.mark.parametrize("device", ON_CUDA)
def test_auto_takes_the_gpu_and_each_rank_its_own(device):
    assert devices.select_device("auto", local_rank=0) == torch.device("cuda", 0)
    visible = torch.cuda.device_count()
    # one GPU visible (CUDA_VISIBLE_DEVICES per rank): every local rank takes it; several: its own
    assert devices.select_device("cuda", local_rank=visible - 1).index == visible - 1
    assert devices.device_index(3, 1) == 0
