"""MNIST-family data read once into uint8 tensors that stay on the training device.

torchvision's dataset classes do the downloading and IDX parsing; after that no per-sample
transform, PIL image or worker process is involved: a batch is an index gather on the resident
tensor followed by normalisation on the device. Run as `python -m hpc_mnist.data download --root DIR`
to prefetch on a login node.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DistributedSampler, random_split

from hpc_mnist.config import DataConfig
from hpc_mnist.errors import UserError

# torchvision class name and the usual (mean, std) of the training pixels in [0, 1].
DATASETS = {
    "mnist": ("MNIST", 0.1307, 0.3081),
    "fashion_mnist": ("FashionMNIST", 0.2860, 0.3530),
    "kmnist": ("KMNIST", 0.1918, 0.3483),
}
IDX_MAGIC = {"images": 0x0803, "labels": 0x0801}  # unsigned bytes, 3 or 1 dimensions


def resolve_root(root: str) -> Path:
    return Path(root or os.environ.get("HPC_MNIST_DATA") or "./data")


def _tv_class(name: str):
    from torchvision import datasets

    return getattr(datasets, DATASETS[name][0])


def _prefetch_hint(root: Path) -> str:
    return (f"prefetch with `python -m hpc_mnist.data download --root {root}` on a machine with internet "
            "(a login node), or set data.download=true")


def _check_idx(path: Path, kind: str) -> int:
    """Item count of an IDX file, after checking its header and that its size matches."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(16 if kind == "images" else 8)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    fix = "delete it and download again"
    if len(header) < (16 if kind == "images" else 8):
        raise UserError(f"{path} is truncated ({size} bytes, shorter than its header); {fix}")
    magic = int.from_bytes(header[:4], "big")
    if magic != IDX_MAGIC[kind]:
        raise UserError(f"{path} is not an IDX {kind} file (magic {magic:#010x}, expected "
                        f"{IDX_MAGIC[kind]:#010x}); {fix}")
    dims = [int.from_bytes(header[i:i + 4], "big") for i in range(4, len(header), 4)]
    expected = len(header) + dims[0] * (dims[1] * dims[2] if kind == "images" else 1)
    if size != expected:
        raise UserError(f"{path} is truncated or corrupt ({size} bytes, header promises {expected}); {fix}")
    if kind == "images" and dims[1:] != [28, 28]:
        raise UserError(f"{path} holds {dims[1]}x{dims[2]} images, expected 28x28; {fix}")
    return dims[0]


def prepare(cfg: DataConfig) -> Path:
    """Make sure the files are present and sound (rank 0 runs this while the others wait)."""
    root = resolve_root(cfg.root)
    if cfg.name == "synthetic":
        return root
    cls = _tv_class(cfg.name)
    if cfg.download:
        try:
            cls(str(root), train=True, download=True)
            cls(str(root), train=False, download=True)
        except RuntimeError:
            raise UserError(f"could not download {cfg.name} into {root} (no internet here?); prefetch with "
                            f"`python -m hpc_mnist.data download --root {root}` on a login node") from None
        except OSError as e:
            raise UserError(f"cannot write the dataset into {root}: {e.strerror or e}") from None
    raw = root / DATASETS[cfg.name][0] / "raw"
    for split in ("train", "t10k"):
        images, labels = raw / f"{split}-images-idx3-ubyte", raw / f"{split}-labels-idx1-ubyte"
        if not images.exists() or not labels.exists():
            raise UserError(f"{cfg.name} files not found: expected {images} and {labels}; " + _prefetch_hint(root))
        n_images, n_labels = _check_idx(images, "images"), _check_idx(labels, "labels")
        if n_images != n_labels:
            raise UserError(f"{images} holds {n_images} images but {labels} holds {n_labels} labels; "
                            "the pair is from different downloads: delete both and download again")
    return root


def _read(cfg: DataConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 28, 28] and int64 labels [N] of one split."""
    if cfg.name == "synthetic":
        return synthetic(cfg.synthetic_train if train else cfg.synthetic_test, seed=1 if train else 2)
    try:
        ds = _tv_class(cfg.name)(str(resolve_root(cfg.root)), train=train, download=False)
    except (RuntimeError, AssertionError, ValueError) as e:
        raise UserError(f"torchvision could not read {cfg.name} from {resolve_root(cfg.root)}: {e}") from None
    return ds.data, ds.targets.long()


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic, learnable digits-like data: a fixed blurry pattern per class plus heavy noise."""
    protos = torch.rand(10, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    protos = torch.nn.functional.interpolate(protos, size=(28, 28), mode="bilinear").squeeze(1)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    noise = torch.rand(n, 28, 28, generator=g)
    images = (0.5 * protos[labels] + 0.5 * noise) * 255
    return images.to(torch.uint8), labels


def write_idx_split(root: Path, split: str, images: torch.Tensor, labels: torch.Tensor, name: str = "mnist") -> None:
    """Write uint8 images [N, 28, 28] and labels [N] as torchvision's raw IDX files (split: train or t10k).

    Lets the real torchvision loading code read any digits (a slice of the real ones in tests, synthetic
    ones for the benchmark's reference path)."""
    raw = root / DATASETS[name][0] / "raw"
    raw.mkdir(parents=True, exist_ok=True)

    def header(magic: int, dims: list[int]) -> bytes:
        return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)

    n = len(labels)
    (raw / f"{split}-images-idx3-ubyte").write_bytes(
        header(IDX_MAGIC["images"], [n, 28, 28]) + images.to(torch.uint8).contiguous().numpy().tobytes())
    (raw / f"{split}-labels-idx1-ubyte").write_bytes(
        header(IDX_MAGIC["labels"], [n]) + labels.to(torch.uint8).numpy().tobytes())


@dataclass
class Subset:
    """Rows `index` of a shared uint8 image tensor (views, never copies)."""

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return len(self.index)


class DeviceData:
    """Train / validation / test subsets resident on one device, batched by index gathers."""

    def __init__(self, cfg: DataConfig, device: torch.device):
        train_images, train_labels = _read(cfg, train=True)
        test_images, test_labels = _read(cfg, train=False)
        # Same split as torch.utils.data.random_split in the tutorials (seed 55: 48,000 / 12,000).
        with warnings.catch_warnings():  # an empty split is reported below, as one line
            warnings.simplefilter("ignore", UserWarning)
            train_idx, val_idx = random_split(range(len(train_labels)), [1 - cfg.val_fraction, cfg.val_fraction],
                                              generator=torch.Generator().manual_seed(cfg.split_seed))
        if min(len(train_idx), len(val_idx)) == 0:
            raise UserError(f"{len(train_labels)} training images leave an empty train or validation split with "
                            f"data.val_fraction={cfg.val_fraction}: use more data or another fraction",
                            on_all_ranks=True)
        if cfg.name == "synthetic":
            mean, std = train_images.float().mean().item() / 255, train_images.float().std().item() / 255
        else:
            mean, std = DATASETS[cfg.name][1:]
        home = device if cfg.resident else torch.device("cpu")

        def put(t: torch.Tensor) -> torch.Tensor:
            t = t.to(home)
            return t.pin_memory() if home.type == "cpu" and device.type == "cuda" else t

        train_images, train_labels = put(train_images), put(train_labels)
        self.train = Subset(train_images, train_labels, torch.tensor(train_idx.indices, device=home))
        self.val = Subset(train_images, train_labels, torch.tensor(val_idx.indices, device=home))
        test_images = put(test_images)
        self.test = Subset(test_images, put(test_labels), torch.arange(len(test_labels), device=home))
        self.device = device
        self._shift, self._scale = 255 * mean, 1 / (255 * std)

    def batch(self, subset: Subset, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images [B, 1, 28, 28] (float32) and labels [B] for positions into `subset`."""
        # index_select, not advanced indexing: ten times faster for these small gathers on CPU.
        rows = subset.index.index_select(0, positions.to(subset.index.device))
        x, y = subset.images.index_select(0, rows), subset.labels.index_select(0, rows)
        x = x.to(self.device, non_blocking=True).unsqueeze(1).float()
        return x.sub_(self._shift).mul_(self._scale), y.to(self.device, non_blocking=True)

    def train_batches(self, sampler: DistributedSampler, batch_size: int) -> list[torch.Tensor]:
        """This rank's shuffled positions for one epoch (call sampler.set_epoch first), split into batches."""
        return torch.tensor(list(sampler), device=self.train.index.device).split(batch_size)

    @staticmethod
    def eval_positions(subset: Subset, rank: int, world_size: int) -> torch.Tensor:
        """Every `world_size`-th position from `rank`: shards are disjoint and cover each sample once.

        (DistributedSampler would pad shards to equal length with duplicates and bias the metrics.)
        """
        return torch.arange(rank, len(subset), world_size, device=subset.index.device)


def make_sampler(subset: Subset, rank: int, world_size: int, seed: int) -> DistributedSampler:
    if world_size > len(subset):
        raise UserError(f"{world_size} ranks but only {len(subset)} training samples: use fewer ranks",
                        on_all_ranks=True)
    return DistributedSampler(subset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hpc_mnist.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    dl = sub.add_parser("download", help="fetch dataset files (run where there is internet)")
    dl.add_argument("--root", default="", help="target folder (default $HPC_MNIST_DATA, else ./data)")
    dl.add_argument("--name", default="mnist", choices=[*DATASETS, "all"], help="dataset (default mnist)")
    args = p.parse_args(argv)
    try:
        for name in DATASETS if args.name == "all" else [args.name]:
            root = prepare(DataConfig(name=name, root=args.root, download=True))
            print(f"{name}: ready in {root}")
    except UserError as e:
        print(f"hpc_mnist: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
