"""Shared fixtures: a real-digits MNIST root, and helpers to run the trainer as real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpc_mnist.data import BUNDLED, read_idx, write_idx_split

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "PMI", "PALS_", "MPI_LOCAL", "OMPI_", "SLURM_", "PBS_")
MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
TRAIN_DIGITS = 8000  # of the 10,000 real test digits: the first 8,000 act as train, the last 2,000 as test


def write_mnist_root(root: Path, train_count: int = TRAIN_DIGITS) -> Path:
    """Write a small MNIST-layout root (MNIST/raw/*-ubyte) from the real test digits bundled with hpc_mnist,
    for unit tests that need real digits fast; the full set is the bundled copy itself (data.root unset)."""
    images = read_idx(BUNDLED / "t10k-images-idx3-ubyte.gz", "images")
    labels = read_idx(BUNDLED / "t10k-labels-idx1-ubyte.gz", "labels")
    write_idx_split(root, "train", images[:train_count], labels[:train_count])
    write_idx_split(root, "t10k", images[train_count:], labels[train_count:])
    return root


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
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


def without_timing(row: dict) -> dict:
    """An epoch row less what clocks measure (times, rates, per-rank timing): what two equal runs share."""
    return {k: v for k, v in row.items()
            if not (k.endswith("_s") or "_s_" in k or k.startswith("slowest_") or k == "stragglers")}
