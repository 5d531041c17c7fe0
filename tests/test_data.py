import gzip
import hashlib
import json
import shutil
from urllib.error import URLError

import pytest
import torch

from helpers.commands import torchrun
from helpers.data import write_mnist_root
from helpers.processes import REPO, run_train
from hpc_mnist import data as data_command
from hpc_mnist.core import datasets as data
from hpc_mnist.core.config import DataConfig
from hpc_mnist.core.datasets import DeviceData, make_sampler
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


def test_real_digits_slice(mnist_root):
    cfg = DataConfig(name="mnist", root=str(mnist_root), download=False)
    assert data.prepare(cfg) == mnist_root
    ds = DeviceData(cfg, CPU)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6400, 1600, 2000)
    counts = torch.bincount(ds.test.labels, minlength=10)
    assert counts.sum() == 2000 and (counts > 150).all()


def test_bundled_mnist_is_the_real_full_set(monkeypatch):
    monkeypatch.delenv("HPC_MNIST_DATA", raising=False)
    assert data.prepare(DataConfig()) == data.BUNDLED
    for name, md5 in data.BUNDLED_MD5.items():  # the content checksums of the canonical files
        raw = gzip.decompress((data.BUNDLED / f"{name}.gz").read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5
    ds = DeviceData(DataConfig(), CPU)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (48000, 12000, 10000)
    labels = ds.train.labels
    assert torch.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(ds.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    pixels = ds.train.images.float() / 255
    assert abs(pixels.mean().item() - 0.1307) < 1e-4 and abs(pixels.std().item() - 0.3081) < 1e-4


def test_damaged_bundled_copy_is_caught(monkeypatch, tmp_path):
    monkeypatch.delenv("HPC_MNIST_DATA", raising=False)
    for name in data.BUNDLED_MD5:
        shutil.copy(data.BUNDLED / f"{name}.gz", tmp_path)
    raw = bytearray(gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one wrong label: headers and sizes stay sound
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setattr(data, "BUNDLED", tmp_path)
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz does not hold the content .* reinstall"):
        DeviceData(DataConfig(), CPU)


def test_data_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("HPC_MNIST_DATA", str(tmp_path))
    assert data.resolve_root("") == tmp_path
    assert str(data.resolve_root("/x")) == "/x"
    monkeypatch.delenv("HPC_MNIST_DATA")
    assert data.resolve_root("") == data.BUNDLED == data.resolve_root("", "mnist")
    assert str(data.resolve_root("", "fashion_mnist")) == str(data.resolve_root("", "kmnist")) == "data"
    assert str(data.resolve_root("/x")) == "/x"


def _gzip_all(folder):
    for path in list(folder.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()


@pytest.mark.parametrize("layout", ["raw", "raw-gz", "flat", "flat-gz"])
def test_roots_as_users_have_them(layout, mnist_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(mnist_root, root)
    files = root / "MNIST" / "raw"
    if layout.startswith("flat"):
        for path in files.iterdir():
            shutil.move(path, root / path.name)
        shutil.rmtree(root / "MNIST")
        files = root
    if layout.endswith("gz"):
        _gzip_all(files)
    cfg = DataConfig(name="mnist", root=str(root), download=False)
    assert data.prepare(cfg) == root
    got, want = DeviceData(cfg, CPU), DeviceData(DataConfig(name="mnist", root=str(mnist_root)), CPU)
    assert torch.equal(got.train.images, want.train.images) and torch.equal(got.test.labels, want.test.labels)


def test_truncated_gzip_file(mnist_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(mnist_root, root)
    _gzip_all(root / "MNIST" / "raw")
    path = root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(UserError, match=f"{path} is"):
        data.prepare(DataConfig(name="mnist", root=str(root), download=False))


@pytest.mark.parametrize("download", [False, True])
def test_a_data_root_that_does_not_exist_is_named_and_not_created(download, tmp_path, monkeypatch):
    monkeypatch.delenv("HPC_MNIST_DATA", raising=False)
    typo = tmp_path / "datsets" / "mnist"
    with pytest.raises(UserError, match=f"data.root {typo} does not exist: check the path"):
        data.prepare(DataConfig(name="kmnist", root=str(typo), download=download))
    monkeypatch.setenv("HPC_MNIST_DATA", str(typo))
    with pytest.raises(UserError, match=rf"\$HPC_MNIST_DATA={typo} does not exist"):
        data.prepare(DataConfig(name="mnist", download=download))
    assert list(tmp_path.iterdir()) == []


def test_mnist_download_into_an_empty_root_copies_the_bundled_files(tmp_path):
    assert data_command.main(["download", "--root", str(tmp_path)]) == 0
    assert sorted(p.name for p in (tmp_path / "MNIST" / "raw").iterdir()) == sorted(
        f"{name}.gz" for name in data.BUNDLED_MD5)
    ds = DeviceData(DataConfig(root=str(tmp_path)), CPU)
    assert len(ds.train) + len(ds.val) == 60000


def test_other_datasets_missing_offline_hint_names_the_dataset(tmp_path):
    with pytest.raises(UserError) as err:
        data.prepare(DataConfig(name="fashion_mnist", root=str(tmp_path), download=False))
    assert f"hpc-mnist data download --name fashion_mnist --root {tmp_path}`" in str(err.value)


def test_failed_download_command_does_not_send_the_user_to_run_it_again(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.utils as tv_utils

    def offline(*args, **kwargs):
        raise URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(tv_utils.urllib.request, "urlopen", offline)  # as on a compute node: no network
    target = tmp_path / "new" / "datasets"
    assert data_command.main(["download", "--name", "kmnist", "--root", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download kmnist" in err[0] and "Name or service not known" in err[0]
    assert "login node" not in err[0].split("; ", 1)[1].replace("where there is (a login node", "")
    assert "hpc-mnist data download" not in err[0]
    assert list(tmp_path.iterdir()) == []  # no empty folders left behind
    with pytest.raises(UserError, match="--name kmnist --root") as trainer_err:
        data.prepare(DataConfig(name="kmnist", root=str(tmp_path), download=True))
    assert "could not download kmnist" in str(trainer_err.value)
    assert list(tmp_path.iterdir()) == []


def test_val_fraction_zero_trains_on_everything_and_validates_on_test():
    cfg = DataConfig(name="synthetic", synthetic_train=1000, synthetic_test=50, val_fraction=0)
    ds = DeviceData(cfg, CPU)
    assert len(ds.train) == 1000 and ds.val is ds.test
    assert sorted(ds.train.index.tolist()) == list(range(1000))


def test_lesson_inputs_in_zero_one_and_a_fixed_order():
    cfg = DataConfig(name="synthetic", synthetic_train=1000, synthetic_test=10, normalize=False, shuffle=False)
    ds = DeviceData(cfg, CPU)
    x, _ = ds.batch(ds.train, torch.arange(len(ds.train)))
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    torch.testing.assert_close(x.squeeze(1), ds.train.images[ds.train.index].float() / 255)
    sampler = make_sampler(ds.train, 0, 1, seed=3)
    orders = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        orders.append(torch.cat(ds.train_batches(sampler, 64)).tolist())
    assert orders[0] == orders[1] == list(range(len(ds.train)))  # the split's own order, as DataLoader(shuffle=False)


@pytest.fixture
def broken_root(mnist_root, tmp_path):
    return write_mnist_root(tmp_path / "root", train_count=9000)


def _raw(root):
    return root / "MNIST" / "raw"


def test_missing_files_offline_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(UserError) as err:
        data.prepare(DataConfig(name="mnist", root=str(tmp_path), download=False))
    msg = str(err.value)
    assert f"no train-images-idx3-ubyte (or train-images-idx3-ubyte.gz) in {_raw(tmp_path)} or {tmp_path}" in msg
    assert "leave data.root and $HPC_MNIST_DATA unset to use the MNIST copy bundled with hpc_mnist" in msg


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
    assert data_command.main(["download", "--root", str(mnist_root)]) == 0


@pytest.mark.slow
def test_trainer_exits_2_on_a_missing_data_root_and_creates_nothing(tmp_path):
    missing = tmp_path / "nothing"
    result = run_train([f"data.root={missing}", f"log.dir={tmp_path / 'runs'}"])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"hpc_mnist: error: data.root {missing} does not exist: check the path (nothing was created "
                     "there); unset it to use the MNIST copy bundled with hpc_mnist"]
    assert not missing.exists()


@pytest.mark.slow
def test_main_job_trains_on_the_bundled_mnist_offline(tmp_path):
    """The README's main command (one epoch): no data.root, no $HPC_MNIST_DATA, no network, full MNIST."""
    result = run_train(["--config", "configs/mlp.yaml", "train.epochs=1", f"log.dir={tmp_path}", "log.name=main",
                        "log.console=plain", "log.tensorboard=false"],
                       launcher=torchrun(),
                       env={"HPC_MNIST_DATA": "", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "main" / "summary.json").read_text())
    assert summary["test_acc"] > 0.8  # 48,000 real digits, 2 ranks: 188 steps of the tutorial MLP (0.83 here)
    assert not (REPO / "data").exists() or not (REPO / "data" / "MNIST").exists()
