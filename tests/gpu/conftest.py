"""The GPU tests' settings, made before any of them starts CUDA, and deterministic algorithms for a test."""

import os
import warnings

import pytest
import torch


def pytest_configure(config) -> None:
    """cuBLAS's workspace fixed (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts): deterministic matrix products,
    and what torch.use_deterministic_algorithms requires on CUDA (test_resume.py)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@pytest.fixture
def deterministic():
    """Deterministic algorithms, as a user would ask for them (cuDNN's deterministic convolutions among them),
    restored after. warn_only: an operation that has no deterministic CUDA kernel (PyTorch lists NLLLoss) warns
    instead of failing the run, and the test receives those warnings to name them if its results then differ."""
    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), \
        torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield seen
    torch.use_deterministic_algorithms(was[0], warn_only=was[1])
    torch.backends.cudnn.benchmark = was[2]

