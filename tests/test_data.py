import shutil

import pytest
import torch

from conftest import run_train, write_mnist_root
from hpc_mnist import data
from hpc_mnist.config import DataConfig
from hpc_mnist.data import DeviceData, make_sampler
from hpc_mnist.errors import UserError

CPU = torch.device("cpu")


def test_tutorial_split_sizes_and_determinism():
    cfg = DataConfig(name="synthetic", synthetic_train=60000, synthetic_test=100)
    a, b = DeviceData(cfg, CPU), DeviceData(cfg, CPU)
    assert (len(a.train), len(a.val), len(a.test)) == (48000, 12000, 100)
    assert torch.equal(a.train.index, b.train.index) and torch.equal(a.val.index, b.val.index)
    both = torch.cat([a.train.index, a.val.index])
    assert torch.equal(both.sort().values, torch.arange(60000))  # a partition
    other = DeviceData(DataConfig(name="synthetic", synthetic_train=60000, synthetic_test=100, split_seed=1), CPU)
    assert not torch.equal(other.val.index, a.val.index)


def test_split_matches_random_split_as_the_tutorials_use_it():
    ds = DeviceData(DataConfig(name="synthetic", synthetic_train=1000, synthetic_test=10), CPU)
    train, val = torch.utils.data.random_split(range(1000), [0.8, 0.2], generator=torch.Generator().manual_seed(55))
    assert ds.train.index.tolist() == list(train.indices) and ds.val.index.tolist() == list(val.indices)


def test_uint8_storage_is_shared_not_copied():
    ds = DeviceData(DataConfig(name="synthetic", synthetic_train=500, synthetic_test=10), CPU)
    assert ds.train.images.dtype == torch.uint8
    assert ds.train.images.data_ptr() == ds.val.images.data_ptr()


def test_batches_are_normalised_float_images():
    ds = DeviceData(DataConfig(name="synthetic", synthetic_train=2000, synthetic_test=10), CPU)
    x, y = ds.batch(ds.train, torch.arange(len(ds.train)))
    assert x.shape == (1600, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.1
    assert torch.equal(y, ds.train.labels[ds.train.index])


@pytest.mark.parametrize("world", [2, 3, 4])
def test_training_shards_are_disjoint_up_to_padding_and_complete(world):
    ds = DeviceData(DataConfig(name="synthetic", synthetic_train=1000, synthetic_test=10), CPU)
    shards = []
    for rank in range(world):
        sampler = make_sampler(ds.train, rank, world, seed=3)
        sampler.set_epoch(1)
        shards.append(torch.cat(ds.train_batches(sampler, 64)).tolist())
    assert len({len(s) for s in shards}) == 1  # equal step counts on every rank (DDP needs that)
    flat = [p for s in shards for p in s]
    assert set(flat) == set(range(len(ds.train)))
    assert len(flat) - len(set(flat)) < world  # only DistributedSampler's padding repeats


def test_epochs_reshuffle():
    ds = DeviceData(DataConfig(name="synthetic", synthetic_train=1000, synthetic_test=10), CPU)
    sampler = make_sampler(ds.train, 0, 2, seed=3)
    orders = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        orders.append(torch.cat(ds.train_batches(sampler, 64)).tolist())
    assert orders[0] != orders[1]


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_evaluation_shards_cover_every_sample_exactly_once(world):
    ds = DeviceData(DataConfig(name="synthetic", synthetic_train=1003, synthetic_test=10), CPU)
    shards = [DeviceData.eval_positions(ds.val, rank, world).tolist() for rank in range(world)]
    flat = sorted(p for s in shards for p in s)
    assert flat == list(range(len(ds.val)))


def test_too_many_ranks_for_the_data():
    ds = DeviceData(DataConfig(name="synthetic", synthetic_train=10, synthetic_test=10), CPU)
    with pytest.raises(UserError, match="16 ranks but only 8 training samples"):
        make_sampler(ds.train, 0, 16, seed=0)


def test_synthetic_is_deterministic_and_learnable_shape():
    a, b = data.synthetic(300, seed=1), data.synthetic(300, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[1].tolist()) == set(range(10))


def test_real_digits_through_torchvision(mnist_root):
    cfg = DataConfig(name="mnist", root=str(mnist_root), download=False)
    assert data.prepare(cfg) == mnist_root
    ds = DeviceData(cfg, CPU)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6400, 1600, 2000)
    counts = torch.bincount(ds.test.labels, minlength=10)
    assert counts.sum() == 2000 and (counts > 150).all()


def test_data_root_defaults_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HPC_MNIST_DATA", str(tmp_path))
    assert data.resolve_root("") == tmp_path
    monkeypatch.delenv("HPC_MNIST_DATA")
    assert str(data.resolve_root("")) == "data"
    assert str(data.resolve_root("/x")) == "/x"


@pytest.fixture
def broken_root(mnist_root, tmp_path):
    return write_mnist_root(tmp_path / "root", train_count=9000)


def _raw(root):
    return root / "MNIST" / "raw"


def test_missing_files_offline_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(UserError) as err:
        data.prepare(DataConfig(name="mnist", root=str(tmp_path), download=False))
    msg = str(err.value)
    assert str(_raw(tmp_path) / "train-images-idx3-ubyte") in msg
    assert "python -m hpc_mnist.data download --root" in msg


def test_truncated_images(broken_root):
    path = _raw(broken_root) / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=f"{path} is truncated or corrupt"):
        data.prepare(DataConfig(name="mnist", root=str(broken_root), download=False))


def test_file_shorter_than_its_header(broken_root):
    path = _raw(broken_root) / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(UserError, match=f"{path} is truncated"):
        data.prepare(DataConfig(name="mnist", root=str(broken_root), download=False))


def test_wrong_magic(broken_root):
    path = _raw(broken_root) / "train-labels-idx1-ubyte"
    raw = bytearray(path.read_bytes())
    raw[3] = 0x03  # an images magic on a labels file
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"{path} is not an IDX labels file"):
        data.prepare(DataConfig(name="mnist", root=str(broken_root), download=False))


def test_label_count_mismatch(broken_root, tmp_path):
    other = write_mnist_root(tmp_path / "other", train_count=8000)
    shutil.copy(_raw(other) / "train-labels-idx1-ubyte", _raw(broken_root) / "train-labels-idx1-ubyte")
    with pytest.raises(UserError, match="holds 9000 images but .* holds 8000 labels"):
        data.prepare(DataConfig(name="mnist", root=str(broken_root), download=False))


def test_download_command_on_a_ready_root_needs_no_network(mnist_root):
    assert data.main(["download", "--root", str(mnist_root)]) == 0


def test_trainer_exits_2_on_missing_data(tmp_path):
    result = run_train([f"data.root={tmp_path / 'nothing'}", "data.download=false", f"log.dir={tmp_path}"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpc_mnist: error: mnist files not found")
