"""Shared fixtures: a real-digits MNIST root, and helpers to run the trainer as real processes."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpc_mnist.data import write_idx_split

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "PMI", "PALS_", "MPI_LOCAL", "OMPI_", "SLURM_", "PBS_")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
SHARED_MNIST = Path(os.environ.get("HPC_MNIST_SHARED_DATA", REPO.parent / "shared" / "data" / "mnist"))
TRAIN_DIGITS = 8000  # of the 10,000 real test digits: the first 8,000 act as train, the last 2,000 as test


def write_mnist_root(root: Path, train_count: int = TRAIN_DIGITS) -> Path:
    """Write an MNIST-layout root (torchvision's MNIST/raw/*-ubyte) from the shared real digits."""
    images = gzip.decompress((SHARED_MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())[16:]
    labels = gzip.decompress((SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:]
    images = torch.frombuffer(bytearray(images), dtype=torch.uint8).view(-1, 28, 28)
    labels = torch.frombuffer(bytearray(labels), dtype=torch.uint8)
    write_idx_split(root, "train", images[:train_count], labels[:train_count])
    write_idx_split(root, "t10k", images[train_count:], labels[train_count:])
    return root


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST digits not found at {SHARED_MNIST} (set HPC_MNIST_SHARED_DATA)")
    return write_mnist_root(tmp_path_factory.mktemp("mnist"))


def clean_env(*more_prefixes: str, **values: str) -> dict[str, str]:
    """This environment without launcher or scheduler variables (and `more_prefixes`), plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((*LAUNCH_VARS, *more_prefixes))}
    env.update(values)
    return env


def run_train(args: list[str], *, launcher: list[str] | None = None, program: list[str] | None = None,
              env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the trainer (or `program`) in fresh processes under `launcher`, as a user would."""
    cmd = (launcher or [sys.executable]) + (program or ["-m", "hpc_mnist.train"]) + args
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(**(env or {})),
                          cwd=REPO)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
