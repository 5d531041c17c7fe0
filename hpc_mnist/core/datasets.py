"""MNIST-family data read once into uint8 tensors that stay on the training device.

Where the files come from, in this order: `data.root`, else `$HPC_MNIST_DATA`, else (MNIST only) the copy
bundled inside this package, so the main job runs offline with no set-up. FashionMNIST and KMNIST are
downloaded by torchvision on rank 0 (into ./data by default) or read from a prefetched root. A root may
hold the four IDX files gzipped or not, in `<root>/<Dataset>/raw/` (torchvision's layout) or directly in
`<root>/`. The files are parsed here, not by torchvision: no per-sample transform, PIL image or worker
process is involved; a batch is an index gather on the resident tensor followed by scaling on the device.
Run `hpc-mnist data download --name NAME --root DIR` to prefetch where there is internet.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import shutil
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
from torch.utils.data import DistributedSampler, random_split

from hpc_mnist.core.config import DataConfig
from hpc_mnist.errors import UserError

# torchvision class name (also the folder name) and the usual (mean, std) of the training pixels in [0, 1].
DATASETS = {
    "mnist": ("MNIST", 0.1307, 0.3081),
    "fashion_mnist": ("FashionMNIST", 0.2860, 0.3530),
    "kmnist": ("KMNIST", 0.1918, 0.3483),
}
IDX_MAGIC = {"images": 0x0803, "labels": 0x0801}  # unsigned bytes, 3 or 1 dimensions
SPLITS = {"train": "train", "test": "t10k"}  # our split name -> the IDX file prefix
BUNDLED = Path(__file__).resolve().parents[1] / "mnist"
# md5 of the uncompressed content of the bundled files (the train .gz files were re-compressed, so
# their .gz checksums are not the canonical ones: never hand them to torchvision's download check).
BUNDLED_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def resolve_root(root: str, name: str = "mnist") -> Path:
    """data.root, else $HPC_MNIST_DATA, else the bundled copy (MNIST) or ./data (the others)."""
    if root or os.environ.get("HPC_MNIST_DATA"):
        return Path(root or os.environ["HPC_MNIST_DATA"])
    return BUNDLED if name == "mnist" else Path("data")


def _root_source(cfg: DataConfig) -> str:
    """How the user named the root, for messages."""
    if cfg.root:
        return f"data.root {cfg.root}"
    if os.environ.get("HPC_MNIST_DATA"):
        return f"$HPC_MNIST_DATA={os.environ['HPC_MNIST_DATA']}"
    return ""


def file_names(split: str) -> tuple[str, str]:
    prefix = SPLITS[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def find_file(root: Path, name: str, filename: str) -> Path | None:
    """`filename` or `filename.gz` in <root>/<Dataset>/raw/, <root>/<Dataset>/ or <root>/ (first found)."""
    folder = DATASETS[name][0]
    for where in (root / folder / "raw", root / folder, root):
        for candidate in (where / filename, where / f"{filename}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _download_hint(name: str, root: Path) -> str:
    return (f"prefetch with `hpc-mnist data download --name {name} --root {root}` on a machine with "
            "internet (a login node), or copy its four files (gzipped or not) into that folder")


def _header_and_size(path: Path, kind: str) -> tuple[bytes, int]:
    """The IDX header and the content size, without decompressing a whole .gz file."""
    want = 16 if kind == "images" else 8
    try:
        if path.suffix != ".gz":
            with open(path, "rb") as f:
                return f.read(want), path.stat().st_size
        with gzip.open(path, "rb") as f:
            header = f.read(want)
        with open(path, "rb") as f:  # a one-member gzip file ends with its content size mod 2**32
            f.seek(-4, os.SEEK_END)
            return header, int.from_bytes(f.read(4), "little")
    except OSError as e:  # also gzip.BadGzipFile
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except (EOFError, zlib.error) as e:
        raise UserError(f"{path} is not a sound gzip file ({e}); delete it and fetch it again") from None


def _check_idx(path: Path, kind: str, header: bytes, size: int) -> int:
    """Item count of an IDX file, after checking its header and that its (uncompressed) size matches."""
    fix = "delete it and fetch it again"
    if len(header) < (16 if kind == "images" else 8):
        raise UserError(f"{path} is truncated ({size} bytes, shorter than its header); {fix}")
    magic = int.from_bytes(header[:4], "big")
    if magic != IDX_MAGIC[kind]:
        raise UserError(f"{path} is not an IDX {kind} file (magic {magic:#010x}, expected "
                        f"{IDX_MAGIC[kind]:#010x}); {fix}")
    dims = [int.from_bytes(header[i:i + 4], "big") for i in range(4, len(header), 4)]
    expected = len(header) + dims[0] * (dims[1] * dims[2] if kind == "images" else 1)
    if path.suffix == ".gz":
        expected %= 2**32
    if size != expected:  # a .gz's size is its trailer's: from a cut file, 4 bytes from the middle of the data
        found = "its gzip trailer disagrees" if path.suffix == ".gz" else f"{size:,} bytes"
        raise UserError(f"{path} is truncated or corrupt ({found}; its header promises {expected:,} bytes); {fix}")
    if kind == "images" and dims[1:] != [28, 28]:
        raise UserError(f"{path} holds {dims[1]}x{dims[2]} images, expected 28x28; {fix}")
    return dims[0]


def read_idx(path: Path, kind: str, md5: str = "") -> torch.Tensor:
    """uint8 images [N, 28, 28] or labels [N] from an IDX file, gzipped or not; `md5`: of the content."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    except (EOFError, zlib.error) as e:
        raise UserError(f"{path} is not a sound gzip file ({e}); delete it and fetch it again") from None
    header = 16 if kind == "images" else 8
    count = _check_idx(path, kind, raw[:header], len(raw) % 2**32 if path.suffix == ".gz" else len(raw))
    if md5 and hashlib.md5(raw).hexdigest() != md5:
        raise UserError(f"{path} does not hold the content it should (md5 of its content is not {md5}): the "
                        "installation is damaged; reinstall hpc_mnist")
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header)
    return data.view(count, 28, 28) if kind == "images" else data


class FilesMissing(UserError):
    """The root lacks a file (as opposed to holding a damaged one): fetching may help."""


def locate(cfg: DataConfig, root: Path) -> dict[str, tuple[Path, Path]]:
    """The (images, labels) files of each split under `root`, header-checked; UserError naming what is missing."""
    found = {}
    for split in SPLITS:
        images_name, labels_name = file_names(split)
        images, labels = find_file(root, cfg.name, images_name), find_file(root, cfg.name, labels_name)
        if images is None or labels is None:
            missing = images_name if images is None else labels_name
            folder = root / DATASETS[cfg.name][0] / "raw"
            if root == BUNDLED:
                fix = "this installation of hpc_mnist lacks its bundled MNIST: reinstall it"
            elif cfg.name == "mnist":
                fix = ("leave data.root and $HPC_MNIST_DATA unset to use the MNIST copy bundled with hpc_mnist, "
                       "or copy the four MNIST files (gzipped or not) into that folder")
            else:
                fix = _download_hint(cfg.name, root)
            raise FilesMissing(f"{cfg.name} files not found: no {missing} (or {missing}.gz) in {folder} or "
                               f"{root}; {fix}")
        n_images = _check_idx(images, "images", *_header_and_size(images, "images"))
        n_labels = _check_idx(labels, "labels", *_header_and_size(labels, "labels"))
        if n_images != n_labels:
            raise UserError(f"{images} holds {n_images} images but {labels} holds {n_labels} labels; "
                            "the pair is from different downloads: delete both and fetch them again")
        found[split] = (images, labels)
    return found


def _download(cfg: DataConfig, root: Path, command: bool) -> None:
    """Fetch the files into `root` (MNIST: copied from the bundled copy, no network needed)."""
    raw = root / DATASETS[cfg.name][0] / "raw"
    if cfg.name == "mnist":
        raw.mkdir(parents=True, exist_ok=True)
        for name in BUNDLED_MD5:
            shutil.copyfile(BUNDLED / f"{name}.gz", raw / f"{name}.gz")
        return
    datasets = torchvision_module().datasets

    created = [p for p in (*reversed(root.parents), root, root / DATASETS[cfg.name][0], raw) if not p.exists()]
    chatter = io.StringIO()  # torchvision prints each failed mirror; keep the last reason for our one line
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            cls = getattr(datasets, DATASETS[cfg.name][0])
            cls(str(root), train=True, download=True)
            cls(str(root), train=False, download=True)
    except (RuntimeError, OSError) as e:
        for folder in reversed(created):  # leave no empty folders behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(e, OSError) and not isinstance(e, URLError):
            raise UserError(f"cannot write the dataset into {root}: {e.strerror or e}") from None
        found = re.findall(r"<urlopen error (.*?)>", chatter.getvalue() + str(e))
        reason = found[-1] if found else " ".join(str(e).split())
        where = ("this machine seems to have no internet: run the command where there is (a login node or "
                 "a laptop), or copy the four files (gzipped or not) into that folder" if command else
                 _download_hint(cfg.name, root))
        raise UserError(f"could not download {cfg.name} into {root} ({reason}); {where}") from None


def check_root(cfg: DataConfig, *, command: bool = False) -> Path:
    """A root the user named must exist: it is never created here (a typo would otherwise pass for a missing
    download); the `download` command (`command=True`) creates the root it is given. Cheap: checked before a
    run decides anything, a finished one included."""
    root = resolve_root(cfg.root, cfg.name)
    named = _root_source(cfg)
    if cfg.name != "synthetic" and named and not root.is_dir() and (not command or root.exists()):
        what = "does not exist" if not root.exists() else "is not a folder"
        raise UserError(f"{named} {what}: check the path (nothing was created there)"
                        + ("" if cfg.name != "mnist" else "; unset it to use the MNIST copy bundled with hpc_mnist"))
    return root


def prepare(cfg: DataConfig, *, command: bool = False) -> Path:
    """Make sure the files are present and sound; fetch them if allowed (rank 0 runs this while the others
    wait)."""
    root = check_root(cfg, command=command)
    if cfg.name == "synthetic":
        return root
    try:
        locate(cfg, root)
    except FilesMissing:
        if not cfg.download or root == BUNDLED:
            raise
        _download(cfg, root, command)
        locate(cfg, root)
    return root


def _read(cfg: DataConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 28, 28] and int64 labels [N] of one split."""
    if cfg.name == "synthetic":
        return synthetic(cfg.synthetic_train if train else cfg.synthetic_test, seed=1 if train else 2)
    root = resolve_root(cfg.root, cfg.name)
    images, labels = locate(cfg, root)["train" if train else "test"]
    bundled = root == BUNDLED
    x = read_idx(images, "images", BUNDLED_MD5[images.name.removesuffix(".gz")] if bundled else "")
    y = read_idx(labels, "labels", BUNDLED_MD5[labels.name.removesuffix(".gz")] if bundled else "")
    if len(x) != len(y):
        raise UserError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels; "
                        "the pair is from different downloads: delete both and fetch them again")
    return x, y.long()


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic, learnable digits-like data: a fixed blurry pattern per class plus heavy noise."""
    protos = torch.rand(10, 1, 7, 7, generator=torch.Generator().manual_seed(0))
    protos = torch.nn.functional.interpolate(protos, size=(28, 28), mode="bilinear").squeeze(1)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    noise = torch.rand(n, 28, 28, generator=g)
    images = (0.5 * protos[labels] + 0.5 * noise) * 255
    return images.to(torch.uint8), labels


def torchvision_module():
    """torchvision, or one line when it does not fit this torch (pip can install a pair that does not: its native
    operators then fail to register at import)."""
    try:
        import torchvision
    except Exception as e:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        raise UserError(f"torchvision cannot be imported beside torch {torch.__version__} ({str(e).splitlines()[0]}): "
                        "install the pair that fits, e.g. pip install torch torchvision together") from None
    return torchvision


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
    shuffle: bool = True  # training order reshuffled each epoch (false: the split's own order, every epoch)

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
        self.test_as_val = cfg.val_fraction == 0  # all training digits train; the test set stands in (as Keras)
        if len(train_idx) == 0 or (len(val_idx) == 0 and not self.test_as_val):
            raise UserError(f"{len(train_labels)} training images leave an empty train or validation split with "
                            f"data.val_fraction={cfg.val_fraction}: use more data or another fraction",
                            on_all_ranks=True)
        if not cfg.normalize:  # ToTensor's scaling to [0, 1] only, as the lessons feed their models
            mean, std = 0.0, 1.0
        elif cfg.name == "synthetic":
            mean, std = train_images.float().mean().item() / 255, train_images.float().std().item() / 255
        else:
            mean, std = DATASETS[cfg.name][1:]
        home = device if cfg.resident else torch.device("cpu")

        def put(t: torch.Tensor) -> torch.Tensor:
            t = t.to(home)
            return t.pin_memory() if home.type == "cpu" and device.type == "cuda" else t

        train_images, train_labels = put(train_images), put(train_labels)
        self.train = Subset(train_images, train_labels, torch.tensor(train_idx.indices, device=home), cfg.shuffle)
        test_images = put(test_images)
        self.test = Subset(test_images, put(test_labels), torch.arange(len(test_labels), device=home))
        self.val = self.test if self.test_as_val else Subset(
            train_images, train_labels, torch.tensor(val_idx.indices, device=home))
        self.device = device
        self._shift, self._scale = 255 * mean, 1 / (255 * std)

    def batch(self, subset: Subset, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (or, with data.normalize=false, [0, 1]) float32 images [B, 1, 28, 28] and labels [B]."""
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
    return DistributedSampler(subset, num_replicas=world_size, rank=rank, shuffle=subset.shuffle, seed=seed)
