"""MNIST roots for the tests: real digits, few enough to train on in seconds."""

from __future__ import annotations

from pathlib import Path

from hpc_mnist.core.datasets import BUNDLED, read_idx, write_idx_split

TRAIN_DIGITS = 8000  # of the 10,000 real test digits: the first 8,000 act as train, the last 2,000 as test


def write_mnist_root(root: Path, train_count: int = TRAIN_DIGITS) -> Path:
    """Write a small MNIST-layout root (MNIST/raw/*-ubyte) from the real test digits bundled with hpc_mnist,
    for unit tests that need real digits fast; the full set is the bundled copy itself (data.root unset)."""
    images = read_idx(BUNDLED / "t10k-images-idx3-ubyte.gz", "images")
    labels = read_idx(BUNDLED / "t10k-labels-idx1-ubyte.gz", "labels")
    write_idx_split(root, "train", images[:train_count], labels[:train_count])
    write_idx_split(root, "t10k", images[train_count:], labels[train_count:])
    return root
