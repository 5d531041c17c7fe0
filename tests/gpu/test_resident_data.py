"""Each split stays one uint8 tensor on the training device: the GPU holds the digits once, in a byte each, and a
batch is a gather there; with data.resident=false they wait in pinned host memory and batches travel."""

import pytest
import torch

from helpers.devices import DEVICES, ON_CUDA, small_config
from hpc_mnist.core import config
from hpc_mnist.core.datasets import DeviceData

TRAIN, TEST = 1000, 200


@pytest.mark.parametrize("device", DEVICES)
def test_the_splits_are_uint8_on_the_device_and_batches_are_normalised_there(device):
    data = DeviceData(small_config(device).data, torch.device(device))
    for subset in (data.train, data.val, data.test):
        assert subset.images.device.type == subset.index.device.type == device
        assert subset.images.dtype == torch.uint8
    assert data.train.images is data.val.images  # validation rows are views of the training tensor
    assert data.train.images.nbytes == TRAIN * 784 and data.test.images.nbytes == TEST * 784
    x, y = data.batch(data.train, torch.arange(64, device=device))
    assert x.device.type == y.device.type == device and x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.2 and abs(x.std().item() - 1) < 0.2  # normalised by the training set's figures


@pytest.mark.parametrize("device", DEVICES)
def test_data_left_on_the_host_is_pinned_for_a_gpu_and_batches_still_reach_the_device(device):
    data = DeviceData(small_config(device, "data.resident=false").data, torch.device(device))
    assert data.train.images.device.type == "cpu"
    assert data.train.images.is_pinned() == (device == "cuda")
    x, y = data.batch(data.train, torch.arange(32))
    assert x.device.type == y.device.type == device


@pytest.mark.parametrize("device", ON_CUDA)
def test_the_gpu_holds_the_full_mnist_once_and_a_batch_adds_only_its_own_size(device):
    """The bundled full MNIST (60,000 + 10,000 digits): its bytes once, its labels and row indices beside them,
    and nothing that grows with the data set per batch."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    data = DeviceData(config.DataConfig(), torch.device("cuda", 0))
    held = torch.cuda.memory_allocated() - before
    images = 70_000 * 784  # uint8
    indices = 8 * (70_000 + 60_000 + 10_000)  # int64 labels, the train/val row indices, the test positions
    assert images <= held <= (images + indices) * 1.05 + 2**20, held
    torch.cuda.reset_peak_memory_stats()
    at_rest = torch.cuda.memory_allocated()
    x, y = data.batch(data.train, torch.arange(512, device="cuda"))
    peak = torch.cuda.max_memory_allocated() - at_rest
    assert peak < 16 * 512 * 784 * 4, peak  # a few batch-sized buffers, never a copy of the set
